"""Deleting a project removes its mirror, workspace and build cache on every worker: here (the
embedded mode's only worker), on a separate `celery` worker with a disk of its own (through a
broadcast), and on a worker that was down at the time (a sweep when it starts)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from builds import services
from builds.cleanup import project_artefact_dir, project_build_dir
from builds.models import Status
from builds.tasks import run_deployment
from projects.services import project_delete
from tests.support.processes import (
    clean_env,
    free_port,
    manage,
    start_celery_worker,
    start_serve,
    stop,
)

pytestmark = pytest.mark.django_db(transaction=True)


def _wait_until(condition, process, *, seconds: float = 60) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        assert process.poll() is None, "the process exited"
        time.sleep(0.2)
    return condition()


def _fake_project_files(build_dir: Path, project_id: int) -> Path:
    """What a worker keeps for a project, with a folder a build left read-only."""
    root = build_dir / f"project-{project_id}"
    (root / "mirror.git").mkdir(parents=True)
    (root / "mirror.git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "cache" / "go" / "pkg").mkdir(parents=True)
    (root / "cache" / "go" / "pkg" / "mod.go").write_text("package mod\n")
    (root / "cache" / "go" / "pkg").chmod(0o555)
    (root / "workspace").mkdir()
    return root


def test_deleting_a_project_removes_its_files_in_the_embedded_mode(
    git_repo_factory, sshd_target, project_factory, server_factory, alice
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    other = project_factory(repo, name="Blog")
    server = server_factory(project, sshd_target)
    deployment = services.deployment_create(project=project, servers=[server], user=alice)
    run_deployment.apply(args=(deployment.pk,))
    deployment.refresh_from_db()
    assert deployment.status == Status.SUCCEEDED, deployment.error
    files = project_build_dir(project.pk)
    assert (files / "mirror.git").is_dir() and (files / "workspace").is_dir()
    # The deployment's build output, kept for promotion (docs/promote.md), goes too.
    artefacts = project_artefact_dir(project.pk)
    assert any(path.is_file() for path in (artefacts / "objects").rglob("*"))
    (files / "cache" / "ro").mkdir(parents=True)
    (files / "cache" / "ro").chmod(0o555)
    others = _fake_project_files(project_build_dir(other.pk).parent, other.pk)

    project_delete(project=project, actor=alice)

    assert not files.exists()
    assert not artefacts.exists()
    assert (others / "mirror.git" / "HEAD").is_file()


def test_a_worker_sweeps_at_start_the_files_of_projects_deleted_while_it_was_down(tmp_path):
    """The embedded mode's worker, started by `manage.py serve`."""
    port = free_port()
    data = tmp_path / "var"
    env = clean_env(SLIPWAY_DATA_DIR=str(data), SLIPWAY_BIND=f"127.0.0.1:{port}")
    assert manage("migrate", "--noinput", env=env).returncode == 0
    created = manage(
        "shell",
        "-c",
        "from django.contrib.auth.models import User; "
        "from projects.services import project_create; "
        "owner = User.objects.create_user('alice'); "
        "print(project_create(owner=owner, name='Kept', repository_url='https://1.1.1.1/a.git').pk)",
        env=env,
    )
    assert created.returncode == 0, created.stderr
    kept_id = int(created.stdout.strip().splitlines()[-1])
    kept = _fake_project_files(data / "builds", kept_id)
    deleted = _fake_project_files(data / "builds", kept_id + 41)
    unrelated = data / "builds" / "notes"
    unrelated.mkdir()

    server = start_serve(env, tmp_path / "serve.log")
    try:
        assert _wait_until(lambda: not deleted.exists(), server)
    finally:
        stop(server)
    assert (kept / "mirror.git" / "HEAD").is_file()
    assert unrelated.is_dir()


@pytest.fixture
def separate_worker(tmp_path):
    """A `celery -A deployer worker` with a build directory of its own, and a deleted
    project's files already there from before it started."""
    data = tmp_path / "worker-data"
    stale = _fake_project_files(data / "builds", 987654)
    process = start_celery_worker(data, name="separate")
    yield process, data, stale
    print(stop(process))


def test_a_separate_worker_removes_the_files_of_a_project_deleted_elsewhere(
    separate_worker, git_repo_factory, sshd_target, project_factory, server_factory, alice
):
    process, data, stale = separate_worker
    assert _wait_until(lambda: not stale.exists(), process), "the start-up sweep did not run"
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    deployment = services.deployment_create(project=project, servers=[server], user=alice)
    assert _wait_until(lambda: _finished(deployment), process, seconds=120), (
        "the deployment did not finish"
    )
    assert deployment.status == Status.SUCCEEDED, deployment.error
    files = data / "builds" / f"project-{project.pk}"
    assert (files / "mirror.git").is_dir()
    # This process's own build directory is elsewhere: only the broadcast can reach the worker's.
    assert project_build_dir(project.pk) != files

    project_delete(project=project, actor=alice)

    assert _wait_until(lambda: not files.exists(), process), "the broadcast did not remove them"


def _finished(deployment) -> bool:
    deployment.refresh_from_db()
    return deployment.status in (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)
