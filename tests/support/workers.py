"""Parallel test workers (pytest-xdist) that share nothing they could trip over.

Loaded with ``-p tests.support.workers`` before the Django settings are read (``make test``
runs ``python -m pytest -p tests.support.workers -n N``). In a worker process, xdist has set
``PYTEST_XDIST_WORKER`` ("gw0", "gw1", ...) by then; this module gives that worker:

- its own Redis database: the number in ``REDIS_URL`` plus one plus the worker's number
  (within Redis's default 16 ``databases``, never wrapping round to lower ones), so that a
  Celery worker started by one test never takes a task queued by another worker's test. Kombu prefixes its broadcast channels with the
  database number, so remote control (``inspect ping``) stays apart too.
- its own data directory under ``SLIPWAY_DATA_DIR`` (projects' files are named by primary key,
  which the workers' databases hand out independently).

PostgreSQL needs nothing here: pytest-django suffixes the test database with the worker's name.
In the controller process and without xdist the module does nothing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REDIS_DATABASES = 16
#: REDIS_URL as the run was given it, before this module moved it.
GIVEN_REDIS_URL = os.environ.get("REDIS_URL", "")


def worker_number(name: str | None) -> int | None:
    """0 for "gw0", 1 for "gw1" ...; None outside an xdist worker."""
    match = re.fullmatch(r"gw(\d+)", name or "")
    return int(match.group(1)) if match else None


def worker_redis_url(url: str, number: int) -> str:
    """``url`` with the database moved to the worker's own: the one after ``url``'s for
    worker 0, and so on up. Raises ValueError, saying what to do, past Redis's 16 databases
    (the workers never wrap around onto lower ones, which other programs may be using)."""
    parts = urlsplit(url)
    path = parts.path.strip("/")
    base = int(path) if path.isdigit() else 0
    database = base + 1 + number
    if database >= REDIS_DATABASES:
        raise ValueError(
            f"REDIS_URL names database {base}: test worker gw{number} would need database "
            f"{database}, past Redis's {REDIS_DATABASES}. Use a lower database in REDIS_URL "
            "(the workers take the ones after it), or fewer TEST_WORKERS."
        )
    return urlunsplit(parts._replace(path=f"/{database}"))


def _isolate() -> None:
    number = worker_number(os.environ.get("PYTEST_XDIST_WORKER"))
    if number is None:
        return
    if os.environ.get("REDIS_URL"):
        os.environ["REDIS_URL"] = worker_redis_url(os.environ["REDIS_URL"], number)
    data_dir = os.environ.get("SLIPWAY_DATA_DIR")
    if data_dir:
        own = Path(data_dir) / f"gw{number}"
        own.mkdir(mode=0o700, exist_ok=True)
        os.environ["SLIPWAY_DATA_DIR"] = str(own)


_isolate()
