"""A worker gives the memory a large deployment freed back to the system (deployer.memory)."""

from __future__ import annotations

import ctypes.util

import pytest

from deployer.memory import release_free_memory


def _resident_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.skipif(
    ctypes.util.find_library("c") is None, reason="no C library to load malloc_trim from"
)
def test_it_returns_freed_heap_pages_to_the_kernel():
    release_free_memory()
    # 1 KiB blocks come from glibc's heap (pymalloc keeps only blocks up to 512 bytes).
    blocks = [bytearray(1024) for _ in range(100_000)]
    grown = _resident_kb()
    del blocks

    assert release_free_memory() is True
    assert _resident_kb() < grown - 50_000
