"""Drift checks against real sshd targets and a real S3 API server: a file edited, added or
removed on the server is reported, exactly; what Slipway and the deployment's own commands
wrote is not; and a project that refuses drift fails the deployment before the switch."""

from __future__ import annotations

import os

import pytest

from builds.engine import drift, pipeline, s3
from builds.engine.build import generated_rules
from builds.engine.errors import DriftFound, PermissionDenied, ReleaseMissing
from builds.engine.specs import ON_DRIFT_REFUSE, CommandSpec, ConfigFileSpec
from builds.engine.ssh import connect
from tests.engine.test_s3 import SITE, s3_server
from tests.support.engine import RecordingReporter, after, deploy_spec, server_for

APP = {
    "index.php": "<?php echo 'shop';\n",
    "src/cart.php": "<?php // cart\n",
    "src/with space.php": "<?php // spaced\n",
    "café/menu.txt": "soup\n",
    "README.md": "# Shop\n",
}


def _deploy(repo, tmp_path, server, revision, deployment_id, **overrides):
    reporter = RecordingReporter()
    result = pipeline.deploy(
        deploy_spec(repo, tmp_path, [server], revision, deployment_id=deployment_id, **overrides),
        reporter,
    )
    return result, reporter


def _check(target, server: pipeline.ServerSpec, **options) -> drift.DriftReport:
    assert server.live_manifest is not None and server.live_release is not None
    with connect(server.endpoint) as connection:
        return drift.check_release(
            connection,
            server.deploy_path,
            server.live_manifest,
            release=server.live_release,
            **options,
        )


def _live(target):
    return (target.deploy_path / "current").resolve()


def test_it_reports_exactly_the_files_edited_added_and_removed_on_the_server(
    sshd_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit(APP, "A")
    server = server_for(sshd_target)
    result, _ = _deploy(repo, tmp_path, server, a, 1)
    server = after(result, server)
    assert _check(sshd_target, server).clean

    live = _live(sshd_target)
    (live / "src" / "cart.php").write_text("<?php // cart, edited by hand\n")
    (live / "src" / "with space.php").write_text("<?php // spaced, edited\n")
    (live / "README.md").unlink()
    (live / "shell.php").write_text("<?php system($_GET['c']);\n")
    odd = os.fsencode(live) + b"/caf\xc3\xa9/new\nline \xe2\x98\x83.txt"
    with open(odd, "wb") as handle:
        handle.write(b"odd\n")
    latin1 = os.fsencode(live) + b"/latin-\xe9.txt"
    with open(latin1, "wb") as handle:
        handle.write(b"x")

    report = _check(sshd_target, server)
    assert report.release == server.live_release
    assert {(f.path, f.change) for f in report.files} == {
        ("src/cart.php", drift.CHANGED),
        ("src/with space.php", drift.CHANGED),
        ("README.md", drift.REMOVED),
        ("shell.php", drift.ADDED),
        ("café/new\nline ☃.txt", drift.ADDED),
        (os.fsdecode(b"latin-\xe9.txt"), drift.ADDED),
    }
    shell = next(f for f in report.files if f.path == "shell.php")
    assert shell.size == len("<?php system($_GET['c']);\n")
    assert shell.mtime == pytest.approx((live / "shell.php").stat().st_mtime, abs=1e-3)
    removed = next(f for f in report.files if f.path == "README.md")
    assert (removed.size, removed.mtime) == (len("# Shop\n"), None)
    assert report.summary() == "2 files changed, 3 added, 1 removed"


def test_a_symlink_pointed_elsewhere_is_a_change(sshd_target, git_repo_factory, tmp_path):
    repo = git_repo_factory()
    a = repo.commit({"index.html": "hi\n", "docs/guide.html": "guide\n"}, "A")
    live_link = None
    server = server_for(sshd_target)
    result, _ = _deploy(repo, tmp_path, server, a, 1)
    server = after(result, server)
    live_link = _live(sshd_target) / "latest"
    live_link.symlink_to("docs/guide.html")
    report = _check(sshd_target, server)
    assert [(f.path, f.change) for f in report.files] == [("latest", drift.ADDED)]


def test_what_slipway_and_the_deployments_commands_wrote_is_not_drift_but_a_later_edit_is(
    sshd_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit({**APP, "storage/seed.txt": "seed\n"}, "A")
    server = server_for(sshd_target)
    shared = ("storage/",)
    options = {
        "shared_paths": shared,
        "config_files": (ConfigFileSpec(path="config/app.ini", body="[app]\n"),),
        "commands": (
            CommandSpec(
                command="mkdir -p var && date +%s%N > var/stamp && echo built >> index.php",
                stage="after_switch",
            ),
        ),
        "build": {"managed_paths": (*shared, "config/app.ini"), "generated_paths": ("/cache/",)},
    }
    result, _ = _deploy(repo, tmp_path, server, a, 1, **options)
    assert result.ok, [str(r.error) for r in result.servers]
    server = after(result, server)
    live = _live(sshd_target)
    (live / "cache").mkdir()
    (live / "cache" / "page.html").write_text("cached\n")
    (sshd_target.deploy_path / "shared" / "storage" / "upload.jpg").write_bytes(b"jpg")

    generated = generated_rules(deploy_spec(repo, tmp_path, [server], a, **options).build)
    report = _check(sshd_target, server, generated=generated)
    assert report.clean, report.files

    # Once the deployment left it, a file its commands wrote is compared like any other.
    (live / "var" / "stamp").write_text("by hand\n")
    report = _check(sshd_target, server, generated=generated)
    assert [(f.path, f.change) for f in report.files] == [("var/stamp", drift.ADDED)]


def test_a_server_whose_current_moved_is_not_compared_with_another_releases_manifest(
    sshd_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit(APP, "A")
    server = server_for(sshd_target)
    result, _ = _deploy(repo, tmp_path, server, a, 1)
    server = after(result, server)
    with pytest.raises(ReleaseMissing, match="points at"):
        _check(sshd_target, pipeline.ServerSpec(**{**server.__dict__, "live_release": "x"}))
    (sshd_target.deploy_path / "current").unlink()
    with pytest.raises(ReleaseMissing, match="no live release"):
        _check(sshd_target, server)


def test_a_project_that_refuses_drift_fails_before_the_switch_and_lists_the_files(
    sshd_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit(APP, "A")
    server = server_for(sshd_target)
    result, _ = _deploy(repo, tmp_path, server, a, 1)
    server = after(result, server)
    first_live = _live(sshd_target)
    (first_live / "src" / "cart.php").write_text("<?php // hotfix on the server\n")

    b = repo.commit({"index.php": "<?php echo 'shop v2';\n"}, "B")
    refused, reporter = _deploy(repo, tmp_path, server, b, 2, on_drift=ON_DRIFT_REFUSE)
    outcome = refused.servers[0]
    assert not outcome.ok
    assert isinstance(outcome.error, DriftFound)
    assert "src/cart.php" in str(outcome.error)
    assert "refuses to deploy over drift" in reporter.text
    assert _live(sshd_target) == first_live, "current is untouched"
    assert (first_live / "src" / "cart.php").read_text() == "<?php // hotfix on the server\n"
    assert sorted(p.name for p in (sshd_target.deploy_path / "releases").iterdir()) == [
        first_live.name
    ]
    assert not (sshd_target.deploy_path / ".slipway" / "lock").exists()

    restored, reporter = _deploy(repo, tmp_path, server, b, 3)
    assert restored.ok
    assert "1 paths were changed on the server" in reporter.text
    assert (_live(sshd_target) / "src" / "cart.php").read_text() == "<?php // cart\n"


def test_it_reports_objects_changed_added_and_removed_in_a_bucket(
    s3_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit(SITE, "A")
    server = s3_server(s3_target)
    result, _ = _deploy(repo, tmp_path, server, a, 1)
    assert result.ok, [str(r.error) for r in result.servers]
    outcome = result.servers[0]
    endpoint = server.s3
    assert endpoint is not None
    clean = s3.drift(endpoint, release=outcome.release, manifest=outcome.manifest)
    assert clean.clean and clean.checked == len(SITE)

    client = s3_target.client()
    key = s3_target.prefix
    client.put_object(Bucket=s3_target.bucket, Key=key + "index.html", Body=b"defaced")
    client.delete_object(Bucket=s3_target.bucket, Key=key + "css/site.css")
    client.put_object(Bucket=s3_target.bucket, Key=key + "dropped.php", Body=b"<?php")
    report = s3.drift(endpoint, release=outcome.release, manifest=outcome.manifest)
    assert [(f.path, f.change, f.size) for f in report.files] == [
        ("css/site.css", drift.REMOVED, len(SITE["css/site.css"])),
        ("dropped.php", drift.ADDED, 5),
        ("index.html", drift.CHANGED, 7),
    ]
    assert report.files[1].mtime is not None

    refused, _ = _deploy(repo, tmp_path, server, a, 2, on_drift=ON_DRIFT_REFUSE)
    assert isinstance(refused.servers[0].error, DriftFound)
    assert s3_target.objects()["index.html"] == b"defaced"


def test_a_folder_the_login_user_cannot_read_fails_the_check_saying_why(
    sshd_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit(APP, "A")
    server = server_for(sshd_target)
    result, _ = _deploy(repo, tmp_path, server, a, 1)
    server = after(result, server)
    secret = _live(sshd_target) / "private"
    secret.mkdir()
    (secret / "key.pem").write_text("k")
    secret.chmod(0o000)
    try:
        with pytest.raises(PermissionDenied, match="Permission denied") as raised:
            _check(sshd_target, server)
        assert "b64" not in str(raised.value) and "/M" not in str(raised.value)
    finally:
        secret.chmod(0o755)
