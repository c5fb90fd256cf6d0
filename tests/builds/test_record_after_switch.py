"""A deployment whose `current` switched is recorded as live even when its worker's database
connection dies right then (issue 11's campaign: "Internal error" after the switch, and the
database kept the old release live). PostgreSQL: the fault is a real pg_terminate_backend."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from django.db import connection

from builds import runner, services
from builds.models import Status, TargetStatus
from deployer.db import ADVISORY_NAMESPACE
from servers.models import Release
from tests.support.processes import require_scaled_out

pytestmark = pytest.mark.django_db(transaction=True)


def side_connection() -> psycopg.Connection:
    """A connection of the test's own, outside Django's."""
    settings = connection.settings_dict
    return psycopg.connect(
        host=settings["HOST"],
        port=settings["PORT"] or 5432,
        user=settings["USER"],
        password=settings["PASSWORD"] or None,
        dbname=settings["NAME"],
    )


def wait_for(condition, what: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"waited {seconds} s for {what}"
        time.sleep(0.05)


def test_the_switch_is_recorded_although_the_workers_connection_was_killed_then(
    git_repo_factory, sshd_target, project_factory, server_factory
):
    require_scaled_out()
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    sha = repo.commit({"index.html": "B\n"}, "B")
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    deployment = services.deployment_create(project=project, servers=[server])
    errors: list[BaseException] = []

    def work() -> None:
        try:
            assert claimed is not None
            runner.run(claimed)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    claimed = services.deployment_claim(deployment.pk, worker="celery@test")
    assert claimed is not None
    with side_connection() as side:
        # Hold the project's lock: the worker deploys, then waits for it to record the switch...
        side.execute("SELECT pg_advisory_xact_lock(%s, %s)", [ADVISORY_NAMESPACE, project.pk])
        worker = threading.Thread(target=work)
        worker.start()

        def waiting_pid() -> int | None:
            row = side.execute(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND classid = %s AND objid = %s",
                [ADVISORY_NAMESPACE, project.pk],
            ).fetchone()
            return row[0] if row else None

        wait_for(lambda: waiting_pid() is not None, "the worker to record the switch")
        assert (sshd_target.deploy_path / "current" / "index.html").read_text() == "B\n"
        # ...and its connection dies there, as a restarted PostgreSQL or an operator kills it.
        side.execute("SELECT pg_terminate_backend(%s)", [waiting_pid()])
        side.commit()  # releases the lock
        worker.join(120)

    assert errors == []
    deployment.refresh_from_db()
    assert deployment.status == Status.SUCCEEDED, deployment.error
    target = deployment.targets.get()
    assert target.status == TargetStatus.SUCCEEDED
    live = Release.objects.get(server=server, live=True)
    assert live.revision == sha and live.name == target.release
    assert (sshd_target.deploy_path / "current").resolve().name == live.name


def test_a_connection_killed_before_the_servers_are_touched_fails_naming_the_database(
    git_repo_factory, sshd_target, project_factory, server_factory, monkeypatch
):
    require_scaled_out()
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    deployment = services.deployment_create(project=project, servers=[server])
    claimed = services.deployment_claim(deployment.pk, task_id="t", worker="w")
    assert claimed is not None
    original = runner.server_spec

    def spec_after_a_kill(*args, **kwargs):
        # The campaign's fault: the worker's connection terminated between two queries.
        pid = connection.cursor().connection.info.backend_pid
        with side_connection() as side:
            side.execute("SELECT pg_terminate_backend(%s)", [pid])
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "server_spec", spec_after_a_kill)
    runner.run(claimed)

    claimed.refresh_from_db()
    assert claimed.status == Status.FAILED
    assert claimed.error_code == "database_lost"
    assert claimed.error == runner.DATABASE_LOST
    assert f"Failed: {runner.DATABASE_LOST}" in "\n".join(
        claimed.log_lines.values_list("text", flat=True)
    )
    assert not (sshd_target.deploy_path / "current").exists()
