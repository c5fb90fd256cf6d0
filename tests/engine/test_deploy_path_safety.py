"""The deploy path is checked before Slipway writes to it, in the lock-and-prepare trip."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from builds.engine import pipeline
from builds.engine.errors import UnsafeDeployPath
from builds.engine.release import RemoteLayout
from builds.engine.ssh import connect
from tests.support.engine import RecordingReporter, deploy_spec, server_for

NAME = "20261201-000000000-abcdef1"


def _prepare(target, deploy_path: Path) -> None:
    with connect(target.endpoint()) as connection:
        RemoteLayout(connection, str(deploy_path)).lock_and_prepare(
            NAME,
            holder="test",
            owner_id="deployment-1",
            stale_after=60,
            expected_live=None,
            incremental=False,
        )


def _refusal(target, deploy_path: Path) -> str:
    with pytest.raises(UnsafeDeployPath) as refused:
        _prepare(target, deploy_path)
    message = str(refused.value)
    assert f"127.0.0.1:{target.port}" in message and str(deploy_path) in message
    return message


def _elsewhere(target) -> Path:
    outside = target.root / "elsewhere"
    outside.mkdir(exist_ok=True)
    shutil.chown(outside, target.username)
    return outside


@pytest.mark.parametrize("mode", [0o775, 0o757])
def test_it_refuses_a_deploy_path_writable_by_group_or_others(sshd_target, mode):
    sshd_target.deploy_path.chmod(mode)
    message = _refusal(sshd_target, sshd_target.deploy_path)
    assert "writable by group or others" in message
    assert f"`chmod go-w {sshd_target.deploy_path}`" in message
    assert not (sshd_target.deploy_path / ".slipway").exists(), "nothing written before the check"


def test_it_refuses_a_deploy_path_owned_by_another_user(sshd_target):
    assert os.geteuid() == 0, "making a folder of another account needs root (as in CI)"
    foreign = sshd_target.deploy_path / "foreign"
    foreign.mkdir(mode=0o755)
    os.chown(foreign, 65534, 65534)  # nobody
    message = _refusal(sshd_target, foreign)
    assert f"not by the login user {sshd_target.username} or root" in message
    assert f"`sudo chown {sshd_target.username} {foreign}`" in message


@pytest.mark.parametrize("name", ["releases", "shared", ".slipway", ".slipway/manifests"])
def test_it_refuses_slipways_folders_as_symbolic_links(sshd_target, name):
    outside = _elsewhere(sshd_target)
    link = sshd_target.deploy_path / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside)
    message = _refusal(sshd_target, sshd_target.deploy_path)
    assert f"{name} is a symbolic link (to {outside})" in message
    assert f"`rm {link} && mkdir {link}`" in message
    assert list(outside.iterdir()) == [], "nothing written through the link"


@pytest.mark.parametrize("target_of", ["outside", "../deploy-other", "releases/../../x", "shared"])
def test_it_refuses_current_pointing_outside_releases(sshd_target, target_of):
    outside = _elsewhere(sshd_target)
    current = sshd_target.deploy_path / "current"
    current.symlink_to(str(outside) if target_of == "outside" else target_of)
    message = _refusal(sshd_target, sshd_target.deploy_path)
    assert "current points to" in message and "not to a release in releases/" in message
    assert f"`rm {current}`" in message


def test_it_accepts_current_pointing_into_releases(sshd_target):
    releases = sshd_target.deploy_path / "releases"
    (releases / "20260101-000000000-0000000").mkdir(parents=True)
    for folder in (releases, releases / "20260101-000000000-0000000"):
        shutil.chown(folder, sshd_target.username)
    (sshd_target.deploy_path / "current").symlink_to("releases/20260101-000000000-0000000")
    _prepare(sshd_target, sshd_target.deploy_path)
    assert (sshd_target.deploy_path / "releases" / NAME).is_dir()


def test_a_deployment_to_an_unsafe_path_fails_naming_the_fix(
    sshd_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    revision = repo.commit({"index.html": "A\n"}, "A")
    sshd_target.deploy_path.chmod(0o777)
    result = pipeline.deploy(
        deploy_spec(repo, tmp_path, [server_for(sshd_target)], revision), RecordingReporter()
    )
    (outcome,) = result.servers
    assert not outcome.ok and isinstance(outcome.error, UnsafeDeployPath)
    assert outcome.error.code == "unsafe_deploy_path"
    assert "chmod go-w" in str(outcome.error)
    assert not (sshd_target.deploy_path / "releases").exists()
