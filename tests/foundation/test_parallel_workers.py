"""The suite's parallel workers (tests/support/workers.py) keep their Redis and data apart."""

from __future__ import annotations

import os

import pytest
from django.conf import settings

from tests.support.workers import GIVEN_REDIS_URL, worker_number, worker_redis_url


@pytest.mark.parametrize(
    ("url", "number", "expected"),
    [
        ("redis://127.0.0.1:6379/0", 0, "redis://127.0.0.1:6379/1"),
        ("redis://127.0.0.1:6379", 2, "redis://127.0.0.1:6379/3"),
        ("redis://:secret@redis.internal:6380/4", 1, "redis://:secret@redis.internal:6380/6"),
        ("rediss://127.0.0.1:6379/13", 1, "rediss://127.0.0.1:6379/15"),
    ],
)
def test_each_worker_gets_a_redis_database_of_its_own(url, number, expected):
    assert worker_redis_url(url, number) == expected


def test_workers_never_wrap_round_onto_lower_databases():
    with pytest.raises(ValueError, match="Use a lower database in REDIS_URL"):
        worker_redis_url("redis://127.0.0.1:6379/14", 1)


def test_worker_names_are_read_as_xdist_gives_them():
    assert worker_number("gw0") == 0 and worker_number("gw11") == 11
    assert worker_number(None) is None and worker_number("master") is None


def test_this_worker_uses_its_own_redis_database_and_data_directory():
    number = worker_number(os.environ.get("PYTEST_XDIST_WORKER"))
    if number is None:
        pytest.skip("runs in one process (TEST_WORKERS=0): nothing is shared")
    assert settings.DATA_DIR.name == f"gw{number}"
    if settings.REDIS_URL:
        assert worker_redis_url(GIVEN_REDIS_URL, number) == settings.REDIS_URL
        assert settings.REDIS_URL != GIVEN_REDIS_URL
        assert settings.CELERY_BROKER_URL == settings.REDIS_URL
