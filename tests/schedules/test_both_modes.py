"""The scheduler runs in both shapes: `make run`'s embedded loop (SQLite, the in-process
worker) and celery beat with a worker on PostgreSQL and Redis. Each claims a due slot, runs
it through the worker, and records the outcome."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from builds import schedules
from builds.models import Schedule, ScheduleKind, ScheduleOutcome, ScheduleRun
from builds.services import stack_lock
from servers.models import Server
from tests.support.processes import (
    ROOT,
    clean_env,
    free_port,
    manage,
    scaled_out_env,
    start_celery_worker,
    start_serve,
    stop,
    stop_all,
)

SETUP = """
from datetime import timedelta
from django.contrib.auth.models import User
from django.utils import timezone
from builds.models import Schedule
from builds.services import stack_lock
from projects.services import project_create
from servers.models import Server
alice = User.objects.create_user("alice", password="alice-password-1")
project = project_create(
    owner=alice, name="Shop", repository_url="https://git.example.com/acme/shop.git"
)
server = Server.objects.create(project=project, name="web1", hostname="web1.example.com",
    username="deploy", deploy_path="/srv/web1", host_key_fingerprint="SHA256:" + "k" * 43)
stack_lock(project=project, user=alice, reason="release freeze for the audit")
due = timezone.now() - timedelta(seconds=30)
schedule = Schedule.objects.create(project=project, name="release", kind="once", run_at=due,
    next_run_at=due, skip_unchanged=False)
schedule.servers.set([server])
"""

READ = """
from builds.models import Schedule, ScheduleRun
schedule = Schedule.objects.get()
runs = list(ScheduleRun.objects.values_list("outcome", "reason_code"))
print(repr((runs, schedule.next_run_at)))
"""


def _read(env: dict[str, str]) -> tuple[list[tuple[str, str]], object]:
    answer = manage("shell", "-c", READ, env=env)
    assert answer.returncode == 0, answer.stderr
    import datetime  # noqa: F401 (the repr names it)

    return eval(answer.stdout.strip().splitlines()[-1])  # noqa: S307 (our own repr)


def _wait_for_a_decided_run(read, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs, next_run_at = read()
        if runs and runs[0][0] != ScheduleOutcome.PENDING:
            return runs, next_run_at
        time.sleep(0.5)
    raise AssertionError(f"no run decided within {timeout} s: {read()}")


def test_the_embedded_loop_runs_a_slot_that_came_while_it_was_down_once(tmp_path):
    port = free_port()
    env = clean_env(
        SLIPWAY_DATA_DIR=str(tmp_path / "var"),
        SLIPWAY_BIND=f"127.0.0.1:{port}",
        SLIPWAY_SCHEDULE_TICK="5",
        SLIPWAY_REAPER_INTERVAL="5",
    )
    assert manage("migrate", "--noinput", env=env).returncode == 0
    created = manage("shell", "-c", SETUP, env=env)
    assert created.returncode == 0, created.stderr

    server = start_serve(env, tmp_path / "serve-1.log")
    try:
        runs, next_run_at = _wait_for_a_decided_run(lambda: _read(env))
    finally:
        stop(server)
    assert runs == [(ScheduleOutcome.SKIPPED, "locked")]
    # Stored: a process started again finds nothing due (tests/schedules/test_claims.py
    # races two on one slot).
    assert next_run_at is None


@pytest.mark.django_db(transaction=True)
def test_celery_beat_and_a_worker_run_a_due_slot_on_postgresql_and_redis(tmp_path, alice):
    from projects.services import project_create

    project = project_create(
        owner=alice, name="Shop", repository_url="https://git.example.com/acme/shop.git"
    )
    web1 = Server.objects.create(
        project=project,
        name="web1",
        hostname="web1.example.com",
        username="deploy",
        deploy_path="/srv/web1",
        host_key_fingerprint="SHA256:" + "k" * 43,
    )
    stack_lock(project=project, user=alice, reason="release freeze for the audit")
    schedule = schedules.schedule_create(
        project=project,
        actor=alice,
        name="every minute",
        kind=ScheduleKind.CRON,
        cron="* * * * *",
        servers=[web1],
    )
    # Due now, without waiting for the minute to turn.
    Schedule.objects.filter(pk=schedule.pk).update(
        next_run_at=timezone.now() - timedelta(seconds=1)
    )
    env = scaled_out_env(tmp_path, SLIPWAY_SCHEDULE_TICK="5")
    worker = start_celery_worker(tmp_path, name="scheduler", log_path=tmp_path / "worker.log")
    with (tmp_path / "beat.log").open("w") as log:
        beat = subprocess.Popen(
            [
                *(sys.executable, "-m", "celery", "-A", "deployer", "beat", "--loglevel=INFO"),
                f"--schedule={tmp_path / 'celerybeat-schedule'}",
            ],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            run = ScheduleRun.objects.filter(schedule=schedule).first()
            if run is not None and run.outcome != ScheduleOutcome.PENDING:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(
                "no run decided:\n"
                + Path(tmp_path / "beat.log").read_text()[-3000:]
                + Path(tmp_path / "worker.log").read_text()[-3000:]
            )
    finally:
        stop_all([beat, worker])
    assert (run.outcome, run.reason_code) == (ScheduleOutcome.SKIPPED, "locked")
    assert "locked by alice" in run.reason
    schedule.refresh_from_db()
    assert schedule.next_run_at is not None and schedule.next_run_at > run.slot
