"""Redis away: the API still records deployments (201) and their start messages wait in the
outbox; when Redis is back the relay sends them, again after a restart that lost them, and a
worker runs each deployment once, however many messages reach it.

Scaled-out mode, with a redis-server of the test's own (never the machine's Redis).
"""

from __future__ import annotations

import time

import httpx
import pytest

from builds.models import FINAL, Deployment, LogLine, Status
from builds.services import RUN_DEPLOYMENT_TASK, dispatch_key
from deployer.models import OutboxMessage
from projects.models import ApiToken
from servers.models import Release
from tests.support.processes import (
    ReadyOutput,
    RedisServer,
    Web,
    manage,
    require_scaled_out,
    scaled_out_env,
    start_celery_worker,
    stop,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def redis_server(tmp_path):
    require_scaled_out()
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def slipway_shell(tmp_path, redis_url: str, code: str) -> str:
    """Run ``code`` in a separate Slipway process (as beat's relay task would); its output."""
    env = scaled_out_env(tmp_path / "shell", REDIS_URL=redis_url)
    done = manage("shell", "-c", code, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def relay(tmp_path, redis_url: str) -> int:
    return int(
        slipway_shell(tmp_path, redis_url, "from deployer import outbox; print(outbox.relay())")
    )


def test_a_deployment_asked_for_while_redis_is_away_is_recorded_then_sent_and_run_once(
    tmp_path, redis_server, git_repo_factory, project_factory, server_factory, sshd_target, alice
):
    repo = git_repo_factory()
    repo.commit({"index.html": "after the outage\n"}, "A")
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    _, token = ApiToken.issue(user=alice, name="outage")
    web = Web(tmp_path, redis_server.url)
    try:
        redis_server.stop()
        answer = httpx.post(
            f"{web.url}/api/v1/projects/{project.slug}/deployments/",
            json={"servers": [server.pk]},
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        # The work was recorded: the API says so, whatever the broker did.
        assert answer.status_code == 201, answer.text
    finally:
        web_log = web.stop()
    deployment = Deployment.objects.get(pk=answer.json()["id"])
    assert deployment.status == Status.QUEUED
    message = OutboxMessage.objects.get(key=dispatch_key(deployment.pk))
    assert message.sent_at is None
    assert message.attempts == 1 and message.last_error, web_log[-3000:]

    redis_server.start()  # a Redis without persistence: empty, with a new run_id
    assert relay(tmp_path, redis_server.url) == 1
    message.refresh_from_db()
    assert message.sent_at is not None and message.broker_run
    first_run = message.broker_run

    # Restarted before any worker took the message: Redis forgot it, the relay sends it again.
    redis_server.stop()
    redis_server.start()
    assert relay(tmp_path, redis_server.url) == 1
    message.refresh_from_db()
    assert message.sent_at is not None and message.broker_run not in ("", first_run)
    assert relay(tmp_path, redis_server.url) == 0  # sent, and the broker still holds it

    worker = start_celery_worker(
        tmp_path / "worker", name="after-outage", REDIS_URL=redis_server.url
    )
    output = ReadyOutput(worker)
    try:
        deadline = time.monotonic() + 180
        while Deployment.objects.get(pk=deployment.pk).status not in FINAL:
            assert time.monotonic() < deadline, output.text()[-5000:]
            assert worker.poll() is None, output.text()[-5000:]
            time.sleep(0.3)
        deployment.refresh_from_db()
        assert deployment.status == Status.SUCCEEDED, deployment.error
        message.refresh_from_db()
        assert message.consumed_at is not None and message.consumed_by.startswith("after-outage@")
        assert relay(tmp_path, redis_server.url) == 0  # consumed: never sent again

        # The same message delivered once more (a redelivery, a second relay): the worker's
        # claim changes nothing, so the deployment never runs twice.
        lines = LogLine.objects.filter(deployment=deployment).count()
        slipway_shell(
            tmp_path,
            redis_server.url,
            "from deployer.celery import app; "
            f"app.send_task({RUN_DEPLOYMENT_TASK!r}, args=[{deployment.pk}], "
            f"task_id={message.task_id!r})",
        )
        deadline = time.monotonic() + 60
        while output.text().count(f"[{message.task_id}] succeeded") < 2:
            assert time.monotonic() < deadline, output.text()[-5000:]
            time.sleep(0.2)
    finally:
        stop(worker)
    again = Deployment.objects.get(pk=deployment.pk)
    assert (again.status, again.finished_at) == (Status.SUCCEEDED, deployment.finished_at)
    assert LogLine.objects.filter(deployment=deployment).count() == lines
    assert Release.objects.filter(server=server).count() == 1
    assert (sshd_target.deploy_path / "current" / "index.html").read_text() == "after the outage\n"
