"""Giving a worker's freed memory back to the system after a large job.

A deployment of a large tree builds manifests of a hundred thousand entries (tens of MB of
Python objects each). When it ends they are freed, but glibc keeps the freed pages of its
heaps for the process, so a long-lived worker stays at the high-water mark of its largest
deployment and the next one starts from there. ``malloc_trim(0)`` hands the free pages at
the top and inside glibc's heaps back to the kernel (glibc manual, "Memory Allocation
Tunables" / malloc_trim(3)). Elsewhere (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
from collections.abc import Callable
from typing import cast

logger = logging.getLogger(__name__)


def _load_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        function = getattr(ctypes.CDLL(name), "malloc_trim", None)
    except OSError:
        return None
    return cast("Callable[[int], int] | None", function)


_MALLOC_TRIM = _load_trim()


def release_free_memory() -> bool:
    """Collect cycles, then return free heap pages to the kernel (glibc's malloc_trim).

    Answers whether malloc_trim was available and released something (its return value);
    never raises. Costs a full garbage collection and a walk of glibc's free lists: a few
    milliseconds to a few tens, so call it after a job, not inside one.
    """
    gc.collect()
    if _MALLOC_TRIM is None:
        return False
    try:
        return bool(_MALLOC_TRIM(0))
    except (OSError, ctypes.ArgumentError):
        logger.debug("malloc_trim failed", exc_info=True)
        return False
