"""Scaled out: the hook's task message reaches a separate `celery -A deployer worker`, which
sends the notification. (The other tests run the task in-process; this one proves the path
through the broker.)"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from django.conf import settings
from django.db import connection

from builds.notifications import deployment_event, notification_create
from projects.models import DeliveryStatus
from tests.support.processes import ROOT, stop

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def notification_worker(tmp_path):
    if not (settings.REDIS_URL and settings.DATABASE_URL):
        if os.environ.get("CI"):
            pytest.fail("CI must run with DATABASE_URL and REDIS_URL set (see .ci/run)")
        pytest.skip("scaled-out mode only: set DATABASE_URL and REDIS_URL (as .ci/run does)")
    database = connection.settings_dict
    url = f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}"
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "SLIPWAY_DATA_DIR": str(tmp_path / "worker-data"),
        "SLIPWAY_ENCRYPTION_KEYS": ",".join(settings.ENCRYPTION_KEYS),
        "SLIPWAY_SECRET_KEY": settings.SECRET_KEY,
        # The receiver is on loopback, as an on-premise chat server would be on the LAN.
        "SLIPWAY_ALLOW_PRIVATE_NOTIFICATION_TARGETS": "true",
    }
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "celery", "-A", "deployer", "worker"),
            *("--pool=solo", "--concurrency=1", "--loglevel=INFO", "-n", "notifier@%h"),
        ],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    yield process
    print(stop(process))


def test_it_sends_through_the_broker_once_the_deployment_commits(
    notification_worker, allow_private, receiver, shop, web1, make_deployment, alice
):
    notification_create(project=shop, actor=alice, kind="discord", url=receiver.url())
    [delivery] = deployment_event(make_deployment(shop, [web1]), "succeeded")

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        delivery.refresh_from_db()
        if delivery.status == DeliveryStatus.SENT:
            break
        assert notification_worker.poll() is None, "the worker exited"
        time.sleep(0.2)
    assert delivery.status == DeliveryStatus.SENT, delivery.error
    assert len(receiver.requests) == 1
