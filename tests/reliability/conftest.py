"""Fixtures for the reliability tests: a broker of the test's own, and workers on it."""

from __future__ import annotations

import os
import time

import pytest
from kombu import pools

from builds.models import FINAL, Deployment
from deployer.celery import app
from tests.support.processes import RedisServer


@pytest.fixture
def own_broker(tmp_path, settings):
    """A redis-server of this test's own, which the test process sends to as well (so that
    the test may restart it): the Celery app's broker and REDIS_URL point at it."""
    if not (settings.REDIS_URL and settings.DATABASE_URL):
        if os.environ.get("CI"):
            pytest.fail("CI must run with DATABASE_URL and REDIS_URL set (see .ci/run)")
        pytest.skip("scaled-out mode only: set DATABASE_URL and REDIS_URL (as .ci/run does)")
    server = RedisServer(tmp_path / "redis")
    server.start()
    previous = app.conf.broker_url
    settings.REDIS_URL = server.url
    _use_broker(server.url)
    yield server
    _use_broker(previous)
    server.stop()


def _use_broker(url: str) -> None:
    app.conf.update(broker_url=url)
    # Forget the connection and producer pools (kombu's registries and the app's); they are
    # made again on first use, with the new URL.
    pools.reset()
    app._after_fork()  # type: ignore[attr-defined]  # what Celery runs in a forked child


def wait_until_final(deployment: Deployment, process, *, timeout: float = 120) -> Deployment:
    """Poll until ``deployment`` is final; fails at once when the worker ``process`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        deployment.refresh_from_db()
        if deployment.status in FINAL:
            return deployment
        assert process.poll() is None, f"the worker exited with {process.returncode}"
        time.sleep(0.2)
    raise AssertionError(f"deployment #{deployment.pk} still {deployment.status}")
