"""The transactional outbox: Celery messages are rows first, sent once they are committed.

Work is recorded in the database (a deployment, a webhook delivery) together with an
OutboxMessage in one transaction. When it commits, the message is sent at once; when the
broker cannot take it then (Redis restarting), the row waits and the relay (a beat task, or
the embedded mode's loop) sends it later. A caller therefore never sees a broker error after
its work was recorded, and nothing recorded is lost.

One message per piece of work: ``enqueue`` with a ``key`` records nothing while an earlier
message for that key is still unconsumed (two transactions that start together may both
record one; the second task then finds its work done), and the relay re-sends a sent message only when the
broker that took it has restarted since (its Redis run_id changed: a Redis without
persistence forgets what it held). So nothing is re-sent on a timer.

The pattern: https://microservices.io/patterns/data/transactional-outbox.html
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import redis
from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.db.models import F
from django.utils import timezone

from deployer.celery import app
from deployer.db import retrying
from deployer.models import TASK_ID_PREFIX, OutboxMessage

logger = logging.getLogger(__name__)

#: Seconds the broker may take to accept a message before it counts as unavailable.
SEND_TIMEOUT = 5.0


def enqueue(task: str, *args: int | str, key: str = "") -> OutboxMessage | None:
    """Record a message for ``task(*args)``, sent once the current transaction commits.

    ``args`` are JSON values (ids). With ``key`` ("deployment:12"), nothing is recorded while
    an earlier message with that key is unconsumed, and None is returned. Call it inside the
    transaction that records the work; outside one it is sent at once (autocommit).

    A keyed message coalesces work: whatever this transaction recorded is seen by the task of
    the unconsumed message it found, because ``consumed`` waits for this transaction to end
    before the task reads anything (see _key_barrier). Record the work before calling this.
    """
    if not connection.in_atomic_block:
        with transaction.atomic():
            return _record(task, args, key)
    return _record(task, args, key)


def _record(task: str, args: tuple[int | str, ...], key: str) -> OutboxMessage | None:
    if key:
        _key_barrier(key, shared=True)
        if OutboxMessage.objects.filter(key=key, consumed_at__isnull=True).exists():
            return None
    message = OutboxMessage.objects.create(task=task, args=list(args), key=key)
    message_id = message.pk
    # Robust: whatever fails while sending after the commit (the broker, even the database)
    # is logged, never raised into the request whose work was recorded; the relay sends it.
    transaction.on_commit(lambda: _send_after_commit(message_id), robust=True)
    return message


# The web process's sender (start_background_sender): ids committed by requests, sent by one
# thread so that a request answers once its work is committed, without waiting for the broker.
_pending: queue.SimpleQueue[int] | None = None
_sender_lock = threading.Lock()
#: Most messages one pass of the background sender takes.
BACKGROUND_BATCH = 500


def start_background_sender() -> None:
    """Send committed messages from a thread of this process from now on (the web process:
    `manage.py serve` and each of its uvicorn workers). Idempotent.

    A request then answers as soon as its transaction committed. A message still in this
    thread's hands when the process dies is unsent in the database: the relay sends it.
    """
    global _pending
    with _sender_lock:
        if _pending is not None:
            return
        _pending = queue.SimpleQueue()
        threading.Thread(
            target=_send_forever, args=(_pending,), name="slipway-outbox", daemon=True
        ).start()


def _send_after_commit(message_id: int) -> None:
    if _pending is not None:
        _pending.put(message_id)
    else:
        send([message_id])


def _send_forever(pending: queue.SimpleQueue[int]) -> None:
    while True:
        batch = [pending.get()]
        while len(batch) < BACKGROUND_BATCH:
            try:
                batch.append(pending.get_nowait())
            except queue.Empty:
                break
        try:
            send(batch)
        except Exception:  # a database error: the relay sends what is left
            logger.exception("The outbox sender failed; the relay sends what it left")
        finally:
            # Give the connection back (to the pool in the web process) between batches.
            close_old_connections()


#: Messages sent under one transaction (one row lock each, one UPDATE for all of them).
SEND_BATCH = 100


def send(message_ids: Sequence[int]) -> int:
    """Send the given unsent messages now, in the order given; return how many the broker took.

    Never raises for a broker error: the message stays unsent, with the error recorded, for
    the relay, and so do the ones after it. Safe to call from several processes at once: each
    row is locked while it is sent (SKIP LOCKED), and one already sent is left alone.
    """
    run_id = _broker_run_id(max_age=RUN_ID_MAX_AGE)
    sent = 0
    for start in range(0, len(message_ids), SEND_BATCH):
        chunk = list(message_ids[start : start + SEND_BATCH])
        with transaction.atomic():
            if connection.vendor == "postgresql":
                # Recording that a message was sent need not wait for the disk: lost in a
                # database crash, the message is only sent again, and every task is idempotent.
                # It saves a second fsync in each request that recorded work.
                with connection.cursor() as cursor:
                    cursor.execute("SET LOCAL synchronous_commit TO OFF")
            locked = {
                message.pk: message
                for message in OutboxMessage.objects.select_for_update(skip_locked=True).filter(
                    pk__in=chunk, sent_at__isnull=True
                )
            }
            taken: list[int] = []
            failed: tuple[OutboxMessage, Exception] | None = None
            for message_id in chunk:
                message = locked.get(message_id)
                if message is None:
                    continue
                try:
                    app.send_task(
                        message.task, args=message.args, task_id=message.task_id, retry=False
                    )
                except Exception as exc:  # any broker error: kombu's, redis', a socket's
                    failed = (message, exc)
                    break
                taken.append(message.pk)
            if taken:
                OutboxMessage.objects.filter(pk__in=taken).update(
                    sent_at=timezone.now(),
                    broker_run=run_id,
                    attempts=F("attempts") + 1,
                    last_error="",
                )
            sent += len(taken)
            if failed is not None:
                refused, error = failed
                OutboxMessage.objects.filter(pk=refused.pk).update(
                    attempts=F("attempts") + 1, last_error=_describe(error)[:2000]
                )
                logger.warning(
                    "The broker did not take %s (%s); the relay sends it later",
                    refused,
                    _describe(error),
                )
                return sent
    return sent


def relay(*, limit: int = 500, stranded_after: float | None = None) -> int:
    """Send what is waiting: unsent messages, oldest first, and those a restarted broker lost.

    Returns how many were sent. Run by the `relay-outbox` beat task (housekeeping queue) and
    the embedded mode's periodic loop. ``stranded_after`` (seconds, default STRANDED_AFTER):
    see _release_stranded.
    """
    run_id = _broker_run_id()
    if run_id:
        lost = OutboxMessage.objects.filter(
            sent_at__isnull=False, consumed_at__isnull=True
        ).exclude(broker_run__in=["", run_id])
        count = lost.update(sent_at=None, last_error="The broker restarted before a worker took it")
        if count:
            logger.warning(
                "The broker restarted: %s unconsumed message(s) will be sent again", count
            )
        _release_stranded(STRANDED_AFTER if stranded_after is None else stranded_after)
    waiting = list(
        OutboxMessage.objects.filter(sent_at__isnull=True)
        .order_by("created_at", "id")
        .values_list("pk", flat=True)[:limit]
    )
    return send(waiting)


#: Seconds after which a sent message that no worker started is looked for (the broker's queue,
#: the live workers' reserved and active tasks) and, found nowhere, sent again.
STRANDED_AFTER = 30.0


def _release_stranded(after: float) -> int:
    """Mark unsent again the messages a worker took and died with before starting them.

    A worker killed outright (SIGKILL, a lost machine) holds its prefetched message in the
    broker's unacknowledged set until the visibility timeout (hours: longer than the longest
    deployment), so its deployment would wait that long. A message sent more than ``after``
    seconds ago that is neither in its queue nor reserved or active on a live worker is released here.
    Sending it twice is harmless: a task claims its work with a conditional update.
    """
    cutoff = timezone.now() - timedelta(seconds=after)
    candidates = list(
        OutboxMessage.objects.filter(
            sent_at__lt=cutoff, consumed_at__isnull=True, broker_run__gt=""
        ).order_by("id")[:200]
    )
    if not candidates:
        return 0
    try:
        queued = _ids_in_queues({_queue_of(message.task) for message in candidates})
    except redis.RedisError:
        return 0
    suspects = [message for message in candidates if message.task_id not in queued]
    if not suspects:
        return 0
    held = _ids_held_by_workers()
    if held is None:
        return 0
    stranded = [message.pk for message in suspects if message.task_id not in held]
    count = OutboxMessage.objects.filter(pk__in=stranded, consumed_at__isnull=True).update(
        sent_at=None, last_error="No worker held it (its worker died before starting it)"
    )
    if count:
        logger.warning("%s message(s) stranded by a dead worker will be sent again", count)
    return count


def _queue_of(task: str) -> str:
    route = app.amqp.router.route({}, task)
    return str(route["queue"].name)


def _ids_in_queues(queues: set[str]) -> set[str]:
    """The outbox task ids of the messages waiting in the broker's ``queues`` (kombu's Redis
    transport keeps each queue as a list of JSON messages whose headers carry the task id)."""
    found: set[str] = set()
    client = redis.Redis.from_url(
        settings.REDIS_URL, socket_timeout=SEND_TIMEOUT, socket_connect_timeout=SEND_TIMEOUT
    )
    try:
        for queue in queues:
            for raw in client.lrange(queue, 0, -1):
                text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
                found.update(_TASK_ID.findall(text))
    finally:
        client.close()
    return found


_TASK_ID = re.compile(r'"(' + re.escape(TASK_ID_PREFIX) + r'[0-9]+)"')


def _ids_held_by_workers() -> set[str] | None:
    """The task ids that live workers have reserved or are running; None when the workers
    could not be asked (the broker is away)."""
    try:
        inspect = app.control.inspect(timeout=1.0)
        replies = [inspect.reserved() or {}, inspect.active() or {}]
    except Exception:  # kombu's or redis' errors: ask again at the next relay
        logger.warning("Could not ask the workers what they hold", exc_info=True)
        return None
    return {
        str(task.get("id", ""))
        for reply in replies
        for tasks in reply.values()
        for task in tasks or ()
    }


def resend_unconsumed() -> int:
    """Send again every sent message no worker started: the embedded mode's in-memory broker
    forgot them when the process restarted. Returns how many."""
    count = OutboxMessage.objects.filter(sent_at__isnull=False, consumed_at__isnull=True).update(
        sent_at=None, last_error="Slipway restarted before a worker took it"
    )
    relay()
    return count


@retrying
def consumed(task_id: str | None, *, worker: str = "") -> OutboxMessage | None:
    """Mark the message behind a Celery task id consumed (the task started); return it.

    None for a task not sent from the outbox (``task_id`` without the prefix, or unknown).
    Retried on transient database errors (deployer.db): a task that failed here would lose
    its message (acknowledged) while the row still said it waits, and nothing would send
    the deployment again.
    """
    if not task_id or not task_id.startswith(TASK_ID_PREFIX):
        return None
    suffix = task_id[len(TASK_ID_PREFIX) :]
    if not suffix.isdigit():
        return None
    marked = OutboxMessage.objects.filter(pk=int(suffix), consumed_at__isnull=True).update(
        consumed_at=timezone.now(), consumed_by=worker[:255]
    )
    message = OutboxMessage.objects.filter(pk=int(suffix)).first()
    if marked and message is not None and message.key:
        # Wait for the transactions that found this message unconsumed and so recorded no
        # message of their own: the task must see their work (enqueue, _key_barrier).
        _key_barrier(message.key, shared=False)
    return message


#: First key of the advisory locks on outbox keys (the second is PostgreSQL's hashtext of the
#: key; a collision only makes two keys wait for each other).
KEY_LOCK_NAMESPACE = 0x51197B


def _key_barrier(key: str, *, shared: bool) -> None:
    """Order ``enqueue`` and ``consumed`` on one key (PostgreSQL; held until the transaction
    ends).

    A transaction that records work and finds the key's message unconsumed records no message
    and holds the key shared until it commits; ``consumed`` marks the message taken and then
    takes the key exclusively, so it waits for every such transaction before its task reads
    the work. A transaction that starts after that sees the message consumed and records a
    new one. SQLite needs nothing: the embedded mode's transactions take the write lock when
    they begin (``transaction_mode`` IMMEDIATE), so they run one at a time.
    """
    if connection.vendor != "postgresql":
        return
    if not connection.in_atomic_block:
        raise RuntimeError("_key_barrier holds until the transaction ends: call it inside one")
    function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {function}(%s, hashtext(%s))", [KEY_LOCK_NAMESPACE, key])


def unconsumed(key: str) -> OutboxMessage | None:
    """The message with ``key`` that no worker has started yet, if any."""
    return OutboxMessage.objects.filter(key=key, consumed_at__isnull=True).order_by("-id").first()


#: Seconds a sender reuses the broker's run_id it read: one Redis round trip less per message.
#: A restart inside that window makes the relay send a message twice, which is harmless (every
#: task claims its work with a conditional update).
RUN_ID_MAX_AGE = 5.0
_run_id_cache: tuple[float, str] = (0.0, "")


def _broker_run_id(*, max_age: float = 0.0) -> str:
    """The Redis broker's run_id (changes at every restart); "" without Redis or when it
    cannot be read (then lost-message recovery waits for the next relay)."""
    global _run_id_cache
    if not settings.REDIS_URL:
        return ""
    read_at, cached = _run_id_cache
    if cached and time.monotonic() - read_at < max_age:
        return cached
    try:
        client = redis.Redis.from_url(
            settings.REDIS_URL, socket_timeout=SEND_TIMEOUT, socket_connect_timeout=SEND_TIMEOUT
        )
        try:
            info: dict[str, Any] = client.info("server")
        finally:
            client.close()
    except redis.RedisError:
        return ""
    run_id = str(info.get("run_id", ""))
    _run_id_cache = (time.monotonic(), run_id)
    return run_id


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
