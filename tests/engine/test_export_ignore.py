"""`export-ignore` in .gitattributes leaves paths out of the release, as `git archive` does;
every other attribute still leaves the committed bytes alone."""

from __future__ import annotations

from builds.engine import pipeline
from builds.engine.git import Mirror
from builds.engine.workspace import Workspace
from tests.support.engine import RecordingReporter, deploy_spec, server_for

ATTRIBUTES = """\
/tests export-ignore
fixtures/ export-ignore
*.md export-ignore
docs/internal/** export-ignore
app/secret.txt export-ignore
* text eol=crlf
"""


def _repo(git_repo_factory):
    repo = git_repo_factory()
    repo.commit(
        {
            ".gitattributes": ATTRIBUTES,
            "app/index.php": "<?php echo 1;\n",
            "app/secret.txt": "not for servers\n",
            "app/README.md": "# app\n",
            "tests/test_app.php": "<?php\n",
            "app/fixtures/users.json": "[]\n",
            "docs/internal/notes.txt": "n\n",
            "docs/public.txt": "p\n",
            "README.md": "# readme\n",
        },
        "With attributes",
    )
    return repo


def _deployed(sshd_target) -> set[str]:
    current = sshd_target.deploy_path / "current"
    return {
        path.relative_to(current).as_posix()
        for path in current.rglob("*")
        if path.is_file() and ".slipway" not in path.parts
    }


def test_it_leaves_out_export_ignored_paths_and_keeps_bytes_exact(
    sshd_target, git_repo_factory, tmp_path
):
    repo = _repo(git_repo_factory)
    result = pipeline.deploy(
        deploy_spec(repo, tmp_path, [server_for(sshd_target)]), RecordingReporter()
    )
    assert result.ok, result.servers[0].error
    assert _deployed(sshd_target) == {".gitattributes", "app/index.php", "docs/public.txt"}
    index = sshd_target.deploy_path / "current" / "app" / "index.php"
    assert index.read_bytes() == b"<?php echo 1;\n", "eol=crlf is not applied"


def test_it_deploys_export_ignored_paths_when_the_project_turns_it_off(
    sshd_target, git_repo_factory, tmp_path
):
    repo = _repo(git_repo_factory)
    result = pipeline.deploy(
        deploy_spec(repo, tmp_path, [server_for(sshd_target)], build={"export_ignore": False}),
        RecordingReporter(),
    )
    assert result.ok, result.servers[0].error
    assert "tests/test_app.php" in _deployed(sshd_target)
    assert "app/secret.txt" in _deployed(sshd_target)
    assert "README.md" in _deployed(sshd_target)


def test_it_applies_export_ignore_below_a_subdirectory_and_in_a_busy_workspace(
    sshd_target, git_repo_factory, tmp_path
):
    repo = _repo(git_repo_factory)
    spec = deploy_spec(repo, tmp_path, [server_for(sshd_target)], build={"subdirectory": "app"})
    # The workspace is taken: the build goes to a fresh export, which must honour it too.
    mirror = Mirror(spec.build.mirror_dir, repo.url, allow_local=True)
    reporter = RecordingReporter()
    with Workspace(spec.build.workspace_dir, mirror).try_lock():
        result = pipeline.deploy(spec, reporter)
    assert result.ok, result.servers[0].error
    assert "building in a fresh directory" in reporter.text
    assert _deployed(sshd_target) == {"index.php"}
