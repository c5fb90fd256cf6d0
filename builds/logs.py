"""The deployment log: each line is stored with its sequence number, then broadcast.

The channel layer may drop messages; the stored log never does, and the live page fills any
gap from it by sequence number.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db.models import Max
from django.utils import timezone

from builds.engine.lines import MAX_LINE_CHARS, cut_marker
from builds.engine.masking import Masker
from builds.models import Deployment, LogLine
from deployer.db import retrying

logger = logging.getLogger(__name__)


def group_name(deployment_id: int) -> str:
    return f"deployment-{deployment_id}"


def user_group_name(user_id: int) -> str:
    """The group every live-log socket of one user joins (to be closed on revocation)."""
    return f"user-{user_id}"


def broadcast(deployment_id: int, message: dict[str, object]) -> None:
    """Send to the deployment's live viewers; a lost message is repaired from the stored log."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(group_name(deployment_id), message)
    except Exception:  # the broadcast is best effort by design
        logger.warning("Broadcast to deployment %s failed", deployment_id, exc_info=True)


@retrying
def _store(deployment_id: int, lines: list[LogLine], seq: int) -> None:
    """Store a batch of numbered lines; a deadlock or a lost connection is retried
    (deployer.db), so a flush never fails a deployment for it."""
    LogLine.objects.bulk_create(lines)
    Deployment.objects.filter(pk=deployment_id).update(log_seq=seq)


def line_payload(line: LogLine) -> dict[str, Any]:
    return {
        "seq": line.seq,
        "stream": line.stream,
        "text": line.text,
        "time": line.time.isoformat(),
        "server": line.server_id,
    }


#: A batch of lines is stored and broadcast once it holds this many characters.
FLUSH_CHARS = 256 * 1024
#: A page of the stored log (API, live-log replay) holds at most this many characters of
#: text, and at least one line: what a build prints never makes one answer huge.
LOG_PAGE_CHARS = 1024 * 1024


def stored_lines_after(deployment_id: int, after: int, limit: int) -> tuple[list[LogLine], bool]:
    """The stored lines of a deployment after seq ``after``, in order: up to ``limit`` lines,
    fewer when their text would pass LOG_PAGE_CHARS; and whether more lines follow."""
    lines: list[LogLine] = []
    chars = 0
    query = LogLine.objects.filter(deployment_id=deployment_id, seq__gt=after).order_by("seq")
    for line in query[: limit + 1].iterator(chunk_size=100):
        if len(lines) == limit or (lines and chars + len(line.text) > LOG_PAGE_CHARS):
            return lines, True
        lines.append(line)
        chars += len(line.text)
    return lines, False


@dataclass
class _Pending:
    stream: str
    text: str
    server_id: int | None
    time: datetime


class LogWriter:
    """Numbers, masks, stores and broadcasts one deployment's lines; safe across threads.

    Lines are buffered for at most ``flush_interval`` seconds (or ``batch`` lines, or
    ``FLUSH_CHARS`` characters) so that a chatty build does not make one INSERT per line, and
    no batch (one broadcast message) grows without bound.

    A line longer than ``MAX_LINE_CHARS`` (the engine hands such lines on as ``CutLine``, with
    a margin past the limit) is masked whole, then stored up to the limit, cut earlier where a
    secret would be split, and ends in ``cut_marker`` naming the bytes left out. Masking and
    cutting take time linear in the line's length.
    """

    def __init__(
        self,
        deployment_id: int,
        *,
        mask: Masker | None = None,
        flush_interval: float = 0.2,
        batch: int = 200,
    ) -> None:
        self.deployment_id = deployment_id
        self.mask = mask if mask is not None else Masker()
        self.flush_interval = flush_interval
        self.batch = batch
        self._lock = threading.Lock()
        self._pending: list[_Pending] = []
        self._pending_chars = 0
        self._last_flush = time.monotonic()
        last = LogLine.objects.filter(deployment_id=deployment_id).aggregate(m=Max("seq"))["m"]
        self._seq = last or 0
        self._closed = threading.Event()
        # A line must reach the page promptly even when no further line follows it (a build
        # step printing "building..." and then working quietly for minutes).
        self._flusher = threading.Thread(
            target=self._flush_periodically, name=f"log-{deployment_id}", daemon=True
        )
        self._flusher.start()

    def _flush_periodically(self) -> None:
        from django.db import connection

        try:
            while not self._closed.wait(self.flush_interval):
                if self._pending:
                    self.flush()
        except Exception:  # the writer's own flushes still store every line
            logger.warning(
                "Periodic log flush failed for deployment %s", self.deployment_id, exc_info=True
            )
        finally:
            connection.close()

    def close(self) -> None:
        self._closed.set()
        self._flusher.join(timeout=10)
        self.flush()

    def write(self, stream: str, text: str, *, server_id: int | None = None) -> None:
        stored = self._stored_text(text)
        now = timezone.now()
        with self._lock:
            for part in stored.split("\n") if "\n" in stored else [stored]:
                self._pending.append(_Pending(stream, part, server_id, now))
                self._pending_chars += len(part)
            due = (
                len(self._pending) >= self.batch
                or self._pending_chars >= FLUSH_CHARS
                or time.monotonic() - self._last_flush >= self.flush_interval
            )
        if due:
            self.flush()

    def _stored_text(self, text: str) -> str:
        """``text`` masked, and cut to MAX_LINE_CHARS with a marker when longer."""
        if len(text) <= MAX_LINE_CHARS:
            return self.mask(text)
        cut = self.mask.safe_cut(text, MAX_LINE_CHARS)
        dropped = getattr(text, "dropped_bytes", 0) + len(
            text[cut:].encode("utf-8", "surrogatepass")
        )
        return self.mask(text[:cut]) + cut_marker(dropped)

    def system(self, text: str, *, server_id: int | None = None) -> None:
        self.write("system", text, server_id=server_id)

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
            self._pending_chars = 0
            self._last_flush = time.monotonic()
            if not pending:
                return
            lines = []
            for item in pending:
                self._seq += 1
                lines.append(
                    LogLine(
                        deployment_id=self.deployment_id,
                        seq=self._seq,
                        stream=item.stream,
                        text=item.text,
                        server_id=item.server_id,
                        time=item.time,
                    )
                )
            _store(self.deployment_id, lines, self._seq)
            # Still under the lock: viewers receive batches in sequence order.
            broadcast(
                self.deployment_id,
                {"type": "log.lines", "lines": [line_payload(line) for line in lines]},
            )
