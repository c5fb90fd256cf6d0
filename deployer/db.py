"""Transactions that survive the database's transient errors, and the one lock order.

**Lock order.** Every transaction that changes more than one row of a project's servers,
deployments, targets or releases takes, in this order:

1. the project's advisory lock (``project_lock``: ``pg_advisory_xact_lock``, held until the
   transaction ends; nothing on SQLite, which runs one writer at a time);
2. Server rows, by primary key;
3. Deployment rows, by primary key;
4. then any DeploymentTarget, Release, LogLine and OutboxMessage rows.

Two transactions of one project therefore queue on step 1 instead of deadlocking on rows
taken in opposite orders (creating locked servers then a queued deployment, the worker's
claim the other way round: issue 11). Statements that change one row on their own (the
heartbeat, progress counters, a batch of log lines) need no lock.

**Retries.** ``retrying`` runs a function in a transaction and runs it again, after a short
jittered pause, when PostgreSQL reports a deadlock or a serialization failure, when the
connection was lost before the commit, or when SQLite's write lock stayed busy: the caller
never sees these. An error raised while committing (or by an on-commit callback) is never
retried, since the work may have been recorded.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

#: How many times a transaction runs at most before its error goes to the caller.
ATTEMPTS = 8
#: The first pause in seconds; each further pause doubles it, plus up to as much again of jitter.
FIRST_PAUSE = 0.02

#: SQLSTATEs after which running the transaction again is safe: deadlock_detected,
#: serialization_failure, and the connection lost (admin_shutdown from pg_terminate_backend,
#: crash_shutdown, cannot_connect_now, class 08: connection exceptions).
#: https://www.postgresql.org/docs/current/errcodes-appendix.html
TRANSIENT_STATES = frozenset({"40P01", "40001", "57P01", "57P02", "57P03"})

#: First key of every advisory lock Slipway takes (the second is the project's id), so that
#: they cannot collide with another application's locks on a shared database.
ADVISORY_NAMESPACE = 0x51197A


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a database error after which the whole transaction may run again."""
    if not isinstance(exc, DatabaseError):
        return False
    cause = exc.__cause__
    state = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    if state is not None:
        return state in TRANSIENT_STATES or state.startswith("08")
    if connection.vendor == "sqlite":
        return isinstance(exc, OperationalError) and "database is locked" in str(exc)
    # No SQLSTATE: the client lost the connection (psycopg's "the connection is closed",
    # "server closed the connection unexpectedly", "consuming input failed").
    if not isinstance(exc, InterfaceError | OperationalError):
        return False
    return any(sign in str(exc) for sign in _CONNECTION_LOST) or not _usable()


#: What psycopg says when the server went away without an error message of its own (the
#: fault campaign saw "consuming input failed: server closed the connection unexpectedly"
#: after pg_terminate_backend, on a connection that still looked usable).
_CONNECTION_LOST = (
    "server closed the connection",
    "consuming input failed",
    "the connection is closed",
    "the connection is lost",
    "connection already closed",
)


def _usable() -> bool:
    try:
        return connection.connection is not None and connection.is_usable()
    except DatabaseError:
        return False


def retrying(function: Callable[P, R]) -> Callable[P, R]:
    """Decorate ``function`` to run in its own transaction, retried on transient errors.

    Called inside a caller's transaction, it just runs in a savepoint: only the outermost
    transaction can be run again, so the caller that opened it must retry (its own service
    decorated with this, or deployer.db's 503 for a request). Raises the last error after
    ATTEMPTS runs, and at once any error that is not transient or came from the commit.
    """

    @functools.wraps(function)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        if connection.in_atomic_block:
            with transaction.atomic():
                return function(*args, **kwargs)
        for attempt in range(1, ATTEMPTS + 1):
            committing = False
            try:
                with transaction.atomic():
                    result = function(*args, **kwargs)
                    committing = True
                return result
            except DatabaseError as exc:
                if committing or attempt == ATTEMPTS or not transient(exc):
                    raise
                pause = FIRST_PAUSE * 2 ** (attempt - 1)
                pause += random.uniform(0, pause)  # noqa: S311 (jitter, not a secret)
                logger.info(
                    "%s: %s; running it again in %.0f ms (attempt %s of %s)",
                    function.__qualname__,
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                    pause * 1000,
                    attempt + 1,
                    ATTEMPTS,
                )
                if any(sign in str(exc) for sign in _CONNECTION_LOST) or not _usable():
                    connection.close()
                time.sleep(pause)
        raise AssertionError("unreachable")  # the loop returns or raises

    return run


def project_lock(project_id: int) -> None:
    """Take the project's lock until the current transaction ends: the first step of the lock
    order (see this module). Must run inside a transaction; nothing on SQLite."""
    if not connection.in_atomic_block:
        raise RuntimeError("project_lock holds until the transaction ends: call it inside one")
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [ADVISORY_NAMESPACE, project_id])


#: Errors that mean the database cannot take the request now (unreachable, restarting, or a
#: transient error that outlived its retries): a request gets 503 with Retry-After, never a 500.
UNAVAILABLE_ERRORS = (OperationalError, InterfaceError)
#: Seconds a client is asked to wait before trying again.
RETRY_AFTER_SECONDS = 5
UNAVAILABLE_MESSAGE = (
    "Slipway's database is not available right now; nothing was recorded. "
    f"Try again in {RETRY_AFTER_SECONDS} seconds."
)
