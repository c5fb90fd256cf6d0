"""Scaled out: bursts of signed deliveries against the real web process (`manage.py serve`)
and `celery` workers, on PostgreSQL and Redis.

Every delivery is answered and recorded exactly once, a redelivery is a duplicate, coalescing
leaves at most one running and one queued deployment per server, the newest head goes live,
and the web process holds no more database connections than its pool allows.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest
from django.db import connection

from builds.models import (
    ACTIVE,
    WEBHOOK_ID_OWNERS,
    Deployment,
    DeploymentTarget,
    TargetStatus,
    WebhookDelivery,
    WebhookOutcome,
)
from servers.models import Release
from tests.support.processes import (
    free_port,
    scaled_out_env,
    start_celery_worker,
    start_serve,
    stop,
    stop_all,
)
from tests.webhooks import payloads

pytestmark = pytest.mark.django_db(transaction=True)

BURST = 1000
SENDERS = 8


def _delivery(project, head: str, n: int) -> tuple[bytes, dict[str, str]]:
    """A signed GitHub push of ``head``, as httpx headers; ``n`` makes each body unique."""
    body = payloads.encode(
        payloads.github_push(after=head, commits=[(head, f"Change {n}")], before="0" * 40)
    )
    headers = {
        name.removeprefix("HTTP_").replace("_", "-"): value
        for name, value in payloads.github_headers(
            body, project.webhook_secret, delivery=str(uuid.uuid4())
        ).items()
    }
    return body, {**headers, "Content-Type": "application/json"}


def _send_all(url: str, deliveries, *, senders: int = SENDERS) -> list[httpx.Response]:
    """Send every delivery once, from ``senders`` concurrent clients; the answers in order."""
    local = threading.local()

    def send(delivery) -> httpx.Response:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=60)
        body, headers = delivery
        return local.client.post(url, content=body, headers=headers)

    with ThreadPoolExecutor(max_workers=senders) as pool:
        return list(pool.map(send, deliveries))


def _wait_until(condition, processes, *, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        for process in processes:
            assert process.poll() is None, "a Slipway process exited"
        time.sleep(0.1)
    return condition()


def _settled() -> bool:
    waiting = WebhookDelivery.objects.filter(outcome=WebhookOutcome.ACCEPTED).exists()
    return not waiting and not Deployment.objects.filter(status__in=ACTIVE).exists()


def _web_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return scaled_out_env(
        tmp_path / "web-data",
        SLIPWAY_BIND=f"127.0.0.1:{free_port()}",
        SLIPWAY_LOG_LEVEL="WARNING",
        **extra,
    )


class Sampler:
    """Counts, while it runs, what a query against pg_stat_activity or the tables returns;
    keeps the largest answer."""

    def __init__(self, query: str, params: list[object]) -> None:
        settings = connection.settings_dict
        self.conninfo = (
            f"host={settings['HOST']} port={settings['PORT']} user={settings['USER']} "
            f"dbname={settings['NAME']}"
        )
        self.query, self.params = query, params
        self.samples: list[int] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as sampling:
            while not self.stopped.is_set():
                row = sampling.execute(self.query, self.params).fetchone()
                self.samples.append(int(row[0]) if row else 0)
                self.stopped.wait(0.02)

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)


def test_a_burst_of_deliveries_is_recorded_once_coalesced_and_the_newest_head_goes_live(
    tmp_path, git_repo_factory, sshd_target, project_factory, server_factory
):
    repo = git_repo_factory()
    heads = [repo.commit({"index.html": f"{n}\n"}, f"Commit {n}") for n in range(20)]
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    env = _web_env(tmp_path)
    url = f"http://{env['SLIPWAY_BIND']}{project.webhook_path}"
    web = start_serve(env, tmp_path / "serve.log")
    workers = [
        start_celery_worker(tmp_path / f"w{n}", name=f"burst{n}", log_path=tmp_path / f"w{n}.log")
        for n in range(2)
    ]
    try:
        # Heads in commit order, spread over the burst: senders overlap, so they arrive
        # roughly, not exactly, in that order.
        deliveries = [_delivery(project, heads[n * len(heads) // BURST], n) for n in range(BURST)]
        busy = (
            "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM "
            "builds_deploymenttarget WHERE status = %s GROUP BY server_id) AS per_server"
        )
        with (
            Sampler(busy, [TargetStatus.RUNNING]) as running,
            Sampler(busy, [TargetStatus.QUEUED]) as queued,
        ):
            answers = _send_all(url, deliveries)
            resent = random.Random(11).sample(deliveries, 50)
            again = _send_all(url, resent)
            final = _delivery(project, repo.commit({"index.html": "newest\n"}, "Newest"), BURST)
            last = _send_all(url, [final])
            settled = _wait_until(_settled, [web, *workers], seconds=240)
    finally:
        stop_all([web, *workers])
    logs = "\n".join(path.read_text() for path in sorted(tmp_path.glob("*.log")))
    assert settled, f"deliveries or deployments were still waiting:\n{logs[-20000:]}"

    # Every delivery answered 2xx, and recorded exactly once.
    assert Counter(answer.status_code for answer in answers) == {202: BURST}
    assert [answer.status_code for answer in last] == [202]
    recorded = WebhookDelivery.objects.filter(outcome__in=WEBHOOK_ID_OWNERS)
    assert recorded.count() == BURST + 1
    assert recorded.values("delivery_id").distinct().count() == BURST + 1
    assert sorted(recorded.values_list("pk", flat=True)) == sorted(
        answer.json()["delivery"] for answer in [*answers, *last]
    )
    assert not recorded.filter(outcome=WebhookOutcome.FAILED).exists()
    # A redelivery is answered "duplicate", and creates nothing.
    assert {(answer.status_code, answer.json()["status"]) for answer in again} == {
        (200, "duplicate")
    }
    assert WebhookDelivery.objects.filter(outcome=WebhookOutcome.DUPLICATE).count() == 50
    # Coalescing: never more than one running and one queued deployment per server.
    assert running.samples and queued.samples
    assert max(running.samples) <= 1 and max(queued.samples) <= 1
    assert DeploymentTarget.objects.filter(server=server).count() < BURST
    # The newest head is live.
    assert (sshd_target.deploy_path / "current" / "index.html").read_text() == "newest\n"
    assert Release.objects.get(server=server, live=True).revision == repo.head()


def test_the_web_process_never_holds_more_database_connections_than_its_pool(
    tmp_path, project_factory, git_repo_factory
):
    project = project_factory(git_repo_factory())
    pool_size = 3
    env = _web_env(tmp_path, SLIPWAY_DB_POOL_SIZE=str(pool_size))
    url = f"http://{env['SLIPWAY_BIND']}{project.webhook_path}"
    heads = [payloads.fake_sha(str(n)) for n in range(300)]
    deliveries = [_delivery(project, head, n) for n, head in enumerate(heads)]
    web = start_serve(env, tmp_path / "serve.log")
    try:
        with Sampler(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = %s",
            ["slipway-web"],
        ) as connections:
            answers = _send_all(url, deliveries, senders=16)
    finally:
        stop(web)

    assert Counter(answer.status_code for answer in answers) == {202: len(deliveries)}
    # The sampler saw the web process's connections (it names them), never more than the pool.
    assert max(connections.samples) >= 1
    assert max(connections.samples) <= pool_size
