"""The deploy engine end to end against real sshd targets and real Git repositories."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from builds.engine import pipeline
from builds.engine.build import BuildCommandSpec
from builds.engine.errors import InvalidInput, RevisionNotFound
from builds.engine.release import UNFINISHED_MARKER
from tests.support.engine import RecordingReporter, after, deploy_spec, server_for, tree_digest

SHARED = ("storage/", ".env")


def _repo_ab(git_repo_factory):
    repo = git_repo_factory()
    a = repo.commit(
        {
            "index.php": "<?php echo 'A';\n",
            "lib/util.php": "<?php // util A\n",
            "bin/run": "#!/bin/sh\necho run A\n",
            "docs/notes.md": "excluded\n",
            "storage/seed.txt": "seed from git\n",
            "old.txt": "removed in B\n",
        },
        "Version A",
        executable=["bin/run"],
        symlinks={"link-to-index": "index.php"},
    )
    b = repo.commit(
        {"index.php": "<?php echo 'B';\n", "new/added.txt": "added in B\n", "old.txt": None},
        "Version B",
    )
    return repo, a, b


def _expected_tree(repo, sha: str, tmp_path: Path) -> dict[str, str]:
    export = tmp_path / f"expected-{sha[:7]}"
    export.mkdir()
    repo.git("--work-tree", str(export), "checkout", sha, "--", ".")
    repo.git("reset", "--quiet")
    tree = tree_digest(export)
    for path in list(tree):
        if path == "docs" or path.startswith(("docs/", "storage")) or path == ".env":
            del tree[path]
    return tree


def _live(target) -> Path:
    return (target.deploy_path / "current").resolve()


def test_it_deploys_a_then_b_then_rolls_back_to_exactly_a(sshd_target, git_repo_factory, tmp_path):
    repo, a, b = _repo_ab(git_repo_factory)
    server = server_for(sshd_target)
    commands = (
        # A command that writes into the new release must not leak into older ones.
        pipeline.CommandSpec(
            command="echo appended-%release% >> lib/util.php", stage="before_switch"
        ),
        pipeline.CommandSpec(command="echo switched to %endrev% on %server%", stage="after_switch"),
    )
    options = dict(
        build={"excluded": ("docs/",)},
        config_files=(
            pipeline.ConfigFileSpec(path="config/app.ini", body="server=%server%\nrev=%endrev%\n"),
        ),
        shared_paths=SHARED,
        commands=commands,
    )
    reporter = RecordingReporter()
    first = pipeline.deploy(deploy_spec(repo, tmp_path, [server], a, **options), reporter)
    assert first.ok, first.servers[0].error
    release_a = _live(sshd_target)
    a_snapshot = tree_digest(release_a)
    assert (release_a / "config" / "app.ini").read_text() == f"server=web1\nrev={a}\n"
    assert os.readlink(release_a / "storage") == "../../shared/storage"
    assert (
        sshd_target.deploy_path / "shared" / "storage" / "seed.txt"
    ).read_text() == "seed from git\n"
    assert (sshd_target.deploy_path / "shared" / ".env").exists()
    assert not (release_a / "docs").exists()
    assert os.access(release_a / "bin" / "run", os.X_OK)
    assert f"switched to {a} on web1" in reporter.text

    server = after(first, server)
    second = pipeline.deploy(
        deploy_spec(repo, tmp_path, [server], b, deployment_id=2, **options), RecordingReporter()
    )
    assert second.ok, second.servers[0].error
    changes = second.servers[0].changes
    assert changes is not None
    assert changes.added == ["new/added.txt"]
    # lib/util.php changed on the server after A went live (A's command appended to it): sent again.
    assert changes.modified == ["index.php", "lib/util.php"]
    assert changes.deleted == ["old.txt"]
    release_b = _live(sshd_target)
    assert release_b != release_a
    live_b = tree_digest(release_b, ignore=("config", "storage", ".env", "lib"))
    expected_b = _expected_tree(repo, b, tmp_path)
    assert live_b == {k: v for k, v in expected_b.items() if not k.startswith("lib")}
    assert (release_b / "lib" / "util.php").read_text().count("appended-") == 1
    assert tree_digest(release_a) == a_snapshot, "release A changed after B was deployed"

    server = after(second, server)
    back = pipeline.rollback(
        pipeline.RollbackSpec(
            deployment_id=3,
            project="Shop",
            servers=(server,),
            targets={1: first.servers[0].release or ""},
        ),
        RecordingReporter(),
    )
    assert back[0].ok, back[0].error
    assert _live(sshd_target) == release_a
    assert tree_digest(release_a) == a_snapshot


def test_it_sends_nothing_when_nothing_changed_and_keeps_only_the_configured_releases(
    sshd_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    shas = [repo.commit({"file.txt": f"version {n}\n"}, f"v{n}") for n in range(5)]
    server = server_for(sshd_target, keep_releases=2)
    names = []
    for number, sha in enumerate(shas):
        result = pipeline.deploy(
            deploy_spec(repo, tmp_path, [server], sha, deployment_id=number + 1),
            RecordingReporter(),
        )
        server = after(result, server)
        names.append(result.servers[0].release)
    kept = sorted(p.name for p in (sshd_target.deploy_path / "releases").iterdir())
    # The live release and the newest other (the rollback target) stay; older ones go.
    assert kept == names[-2:]
    again = pipeline.deploy(
        deploy_spec(repo, tmp_path, [server], shas[-1], deployment_id=9), RecordingReporter()
    )
    assert again.servers[0].changes is not None
    assert again.servers[0].changes.is_empty


def test_it_fails_cleanly_when_the_target_dies_mid_transfer_and_recovers_next_time(
    sshd_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit({"small.txt": "A\n"}, "A")
    server = server_for(sshd_target)
    first = pipeline.deploy(deploy_spec(repo, tmp_path, [server], a), RecordingReporter())
    server = after(first, server)
    release_a = _live(sshd_target)
    a_snapshot = tree_digest(release_a)

    big = {f"blob{n}.bin": os.urandom(2 * 1024 * 1024) for n in range(12)}
    b = repo.commit(big, "B: 24 MB of incompressible data")
    reporter = RecordingReporter()
    stopped: list[bool] = []

    def stop_when_started(server_id, bytes_done, bytes_total):
        if 0 < bytes_done < bytes_total and not stopped:
            stopped.append(True)
            sshd_target.stop()

    reporter.on_progress = stop_when_started
    broken = pipeline.deploy(deploy_spec(repo, tmp_path, [server], b, deployment_id=2), reporter)
    assert stopped, "the transfer finished before the target could be stopped"
    outcome = broken.servers[0]
    assert not outcome.ok
    assert "127.0.0.1" in str(outcome.error)
    assert _live(sshd_target) == release_a
    assert tree_digest(release_a) == a_snapshot

    sshd_target.start()
    # Deployment 2 died holding the deploy path's lock; the database knows it has finished.
    retry_spec = deploy_spec(
        repo,
        tmp_path,
        [server],
        b,
        deployment_id=3,
        lock_owner_finished=lambda owner: owner == "deployment-2",
    )
    retry = pipeline.deploy(retry_spec, RecordingReporter())
    assert retry.ok, retry.servers[0].error
    live = _live(sshd_target)
    assert (live / "blob3.bin").read_bytes() == big["blob3.bin"]
    leftovers = [
        p
        for p in (sshd_target.deploy_path / "releases").iterdir()
        if (p / UNFINISHED_MARKER).exists()
    ]
    assert leftovers == []


def test_it_refuses_a_current_that_is_a_real_directory(sshd_target, git_repo_factory, tmp_path):
    repo = git_repo_factory()
    sha = repo.commit({"a.txt": "a\n"})
    (sshd_target.deploy_path / "current").mkdir(parents=True)
    (sshd_target.deploy_path / "current" / "keep.txt").write_text("mine")
    result = pipeline.deploy(
        deploy_spec(repo, tmp_path, [server_for(sshd_target)], sha), RecordingReporter()
    )
    error = str(result.servers[0].error)
    assert "is a real directory" in error and str(sshd_target.deploy_path / "current") in error
    assert (sshd_target.deploy_path / "current" / "keep.txt").read_text() == "mine"


def test_it_names_the_holder_of_a_lock(sshd_target, git_repo_factory, tmp_path):
    repo = git_repo_factory()
    sha = repo.commit({"a.txt": "a\n"})
    lock = sshd_target.deploy_path / ".slipway" / "lock"
    lock.mkdir(parents=True)
    (lock / "info").write_text(
        "owner=someone-else\nholder=Bob deploying by hand\nsince=2026-11-27T10:00:00Z\n"
    )
    result = pipeline.deploy(
        deploy_spec(repo, tmp_path, [server_for(sshd_target)], sha), RecordingReporter()
    )
    assert "Bob deploying by hand" in str(result.servers[0].error)
    assert not (sshd_target.deploy_path / "current").exists()


def test_it_refuses_to_roll_back_to_a_release_that_is_gone(sshd_target, git_repo_factory, tmp_path):
    repo = git_repo_factory()
    sha = repo.commit({"a.txt": "a\n"})
    server = server_for(sshd_target)
    server = after(
        pipeline.deploy(deploy_spec(repo, tmp_path, [server], sha), RecordingReporter()), server
    )
    live = _live(sshd_target)
    results = pipeline.rollback(
        pipeline.RollbackSpec(
            deployment_id=2,
            project="Shop",
            servers=(server,),
            targets={1: "20200101-000000000-abcdef1"},
        ),
        RecordingReporter(),
    )
    assert not results[0].ok
    assert "no longer on the server" in str(results[0].error)
    assert _live(sshd_target) == live
    assert not (sshd_target.deploy_path / ".slipway" / "lock").exists(), "the lock is released"


def test_it_deploys_to_three_servers_from_one_build(sshd_factory, git_repo_factory, tmp_path):
    repo = git_repo_factory()
    sha = repo.commit({"a.txt": "a\n", "b/c.txt": "c\n"})
    targets = [sshd_factory() for _ in range(3)]
    servers = [server_for(t, n + 1) for n, t in enumerate(targets)]
    reporter = RecordingReporter()
    spec = deploy_spec(
        repo,
        tmp_path,
        servers,
        sha,
        build={"build_commands": (BuildCommandSpec(command="echo built > built.txt"),)},
    )
    result = pipeline.deploy(spec, reporter)
    assert result.ok
    assert [line for line in reporter.lines if line[1] == "$ echo built > built.txt"] != []
    names = {r.release for r in result.servers}
    assert len(names) == 1, "every server gets the same release name"
    for target in targets:
        assert (_live(target) / "built.txt").read_text() == "built\n"


def test_it_stops_on_a_failing_build_command_with_its_exit_code_and_last_lines(
    sshd_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    sha = repo.commit({"a.txt": "a\n"})
    spec = deploy_spec(
        repo,
        tmp_path,
        [server_for(sshd_target)],
        sha,
        build={
            "build_commands": (BuildCommandSpec(command="echo compiling; echo broken >&2; exit 7"),)
        },
    )
    with pytest.raises(Exception, match="exit code 7") as raised:
        pipeline.deploy(spec, RecordingReporter())
    assert "broken" in str(raised.value)
    assert not (sshd_target.deploy_path / "current").exists()


def test_it_deploys_in_place_over_sftp(sshd_target, git_repo_factory, tmp_path):
    repo = git_repo_factory()
    a = repo.commit({"a.txt": "a\n", "dir/b.txt": "b\n", "gone.txt": "x\n"})
    b = repo.commit({"a.txt": "a2\n", "gone.txt": None, "new.txt": "n\n"})
    server = server_for(sshd_target, atomic=False, shell=False)
    first = pipeline.deploy(
        deploy_spec(
            repo,
            tmp_path,
            [server],
            a,
            config_files=(pipeline.ConfigFileSpec(path="conf.ini", body="s=%server%"),),
        ),
        RecordingReporter(),
    )
    assert first.ok, first.servers[0].error
    server = after(first, server)
    second = pipeline.deploy(
        deploy_spec(repo, tmp_path, [server], b, deployment_id=2), RecordingReporter()
    )
    assert second.ok, second.servers[0].error
    root = sshd_target.deploy_path
    assert (root / "a.txt").read_text() == "a2\n"
    assert (root / "new.txt").read_text() == "n\n"
    assert not (root / "gone.txt").exists()
    assert (root / "dir" / "b.txt").read_text() == "b\n"
    assert second.servers[0].changes is not None
    assert second.servers[0].changes.modified == ["a.txt"]


def test_commands_in_place_get_the_host_name_and_place_of_their_server(
    sshd_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit({"a.txt": "a\n"})
    server = server_for(sshd_target, atomic=False)  # shell: True by default
    result = pipeline.deploy(
        deploy_spec(
            repo,
            tmp_path,
            [server],
            a,
            commands=(
                pipeline.CommandSpec(
                    command="echo %hostname% %groupindex% > where.txt", stage="after_switch"
                ),
            ),
        ),
        RecordingReporter(),
    )
    assert result.ok, result.servers[0].error
    assert (sshd_target.deploy_path / "where.txt").read_text() == "127.0.0.1 1\n"


def test_it_reports_an_unknown_revision_by_name(sshd_target, git_repo_factory, tmp_path):
    repo = git_repo_factory()
    repo.commit({"a.txt": "a\n"})
    with pytest.raises(RevisionNotFound, match="no-such-branch"):
        pipeline.deploy(
            deploy_spec(repo, tmp_path, [server_for(sshd_target)], "no-such-branch"),
            RecordingReporter(),
        )


HOSTILE_MARKER = Path("/tmp/pwned")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("revision", "main;touch /tmp/pwned"),
        ("revision", "--upload-pack=touch /tmp/pwned"),
        ("repository_url", "ext::sh -c touch% /tmp/pwned"),
        ("deploy_path", "/srv/x';touch /tmp/pwned;'"),
    ],
)
def test_it_refuses_hostile_input_and_runs_nothing(
    sshd_target, git_repo_factory, tmp_path, field, value
):
    HOSTILE_MARKER.unlink(missing_ok=True)
    repo = git_repo_factory()
    repo.commit({"a.txt": "a\n"})
    server = server_for(sshd_target)
    spec = deploy_spec(repo, tmp_path, [server], "main")
    if field == "revision":
        spec = dataclasses.replace(spec, build=dataclasses.replace(spec.build, revision=value))
    elif field == "repository_url":
        spec = dataclasses.replace(
            spec, build=dataclasses.replace(spec.build, repository_url=value)
        )
    else:
        spec = dataclasses.replace(spec, servers=(dataclasses.replace(server, deploy_path=value),))
    with pytest.raises(InvalidInput) as refused:
        pipeline.deploy(spec, RecordingReporter())
    assert refused.value.field == field
    assert not HOSTILE_MARKER.exists()
    assert not (sshd_target.deploy_path / "current").exists()
