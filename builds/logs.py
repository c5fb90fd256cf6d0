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
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from builds.engine.masking import Masker
from builds.engine.ssh import MAX_LINE_CHARS
from builds.models import Deployment, LogLine

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


def line_payload(line: LogLine) -> dict[str, Any]:
    return {
        "seq": line.seq,
        "stream": line.stream,
        "text": line.text,
        "time": line.time.isoformat(),
        "server": line.server_id,
    }


@dataclass
class _Pending:
    stream: str
    text: str
    server_id: int | None
    time: datetime


class LogWriter:
    """Numbers, masks, stores and broadcasts one deployment's lines; safe across threads.

    Lines are buffered for at most ``flush_interval`` seconds (or ``batch`` lines) so that a
    chatty build does not make one INSERT per line.

    A line longer than the engine's ``MAX_LINE_CHARS`` arrives cut into pieces of exactly that
    length; a secret may straddle a cut. Such a piece is held back (per stream and server) and
    masked together with the piece after it, and the pair is cut again where no secret is.
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
        self._held: dict[tuple[str, int | None], str] = {}
        self.flush_interval = flush_interval
        self.batch = batch
        self._lock = threading.Lock()
        self._pending: list[_Pending] = []
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
        with self._lock:
            held, self._held = self._held, {}
            for (stream, server_id), text in held.items():
                self._pending.append(_Pending(stream, self.mask(text), server_id, timezone.now()))
        self.flush()

    def write(self, stream: str, text: str, *, server_id: int | None = None) -> None:
        with self._lock:
            key = (stream, server_id)
            held = self._held.pop(key, "")
            joined = held + text
            cut = self.mask.safe_cut(joined, len(held)) if held else 0
            ready, rest = joined[:cut], joined[cut:]
            if len(text) == MAX_LINE_CHARS and "\n" not in text:
                self._held[key] = rest  # the front of a longer line: wait for what follows
                rest = ""
            for piece in (ready, rest):
                if not piece:
                    continue
                masked = self.mask(piece)
                for part in masked.split("\n") if "\n" in masked else [masked]:
                    self._pending.append(_Pending(stream, part, server_id, timezone.now()))
            due = (
                len(self._pending) >= self.batch
                or time.monotonic() - self._last_flush >= self.flush_interval
            )
        if due:
            self.flush()

    def system(self, text: str, *, server_id: int | None = None) -> None:
        self.write("system", text, server_id=server_id)

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
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
            with transaction.atomic():
                LogLine.objects.bulk_create(lines)
                Deployment.objects.filter(pk=self.deployment_id).update(log_seq=self._seq)
            # Still under the lock: viewers receive batches in sequence order.
            broadcast(
                self.deployment_id,
                {"type": "log.lines", "lines": [line_payload(line) for line in lines]},
            )
