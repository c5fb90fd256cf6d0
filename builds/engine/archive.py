"""The archive that carries a change set: a compressed tar, made once per change set, shared
by every server that needs it, and streamed while it is still being made.

Two codecs. zstd (level 1, on several threads) when the server has `zstd`: it compresses
text at hundreds of MB/s and passes incompressible data through almost for free. Otherwise
gzip: a gzip file may hold several members one after another and ``tar -xz`` reads them as one
stream, so the tar bytes are cut into chunks of a few MiB, each compressed on its own in a
thread pool (zlib releases the GIL while it works); a chunk that does not compress (images,
archives, random binaries) is stored rather than squeezed for nothing.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
import threading
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from builds.engine.manifest import Manifest, _member_pieces

CHUNK_BYTES = 4 * 1024 * 1024
# A sample that zlib cannot shrink below this ratio is stored (level 0).
STORE_RATIO = 0.9
_SAMPLE_BYTES = 64 * 1024
_READ_BYTES = 256 * 1024


def plan_chunks(
    paths: Sequence[str], manifest: Manifest, target: int = CHUNK_BYTES
) -> list[list[str]]:
    """Consecutive groups of about ``target`` bytes of content (a big file stands alone)."""
    chunks: list[list[str]] = []
    current: list[str] = []
    size = 0
    for path in paths:
        entry_size = manifest[path].size if manifest[path].kind == "file" else 0
        if current and size + entry_size > target:
            chunks.append(current)
            current, size = [], 0
        current.append(path)
        size += entry_size + 512
    if current:
        chunks.append(current)
    return chunks


def compress_chunk(
    root: Path, paths: Sequence[str], manifest: Manifest, *, level: int = 1
) -> bytes:
    """One gzip member holding the tar records of ``paths``."""
    raw = b"".join(piece for path in paths for piece in _member_pieces(root, manifest[path]))
    sample = raw[:_SAMPLE_BYTES]
    if level and sample and len(zlib.compress(sample, 1)) > STORE_RATIO * len(sample):
        level = 0
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: a gzip wrapper
    return compressor.compress(raw) + compressor.flush()


def end_of_archive() -> bytes:
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    return compressor.compress(bytes(tarfile.RECORDSIZE)) + compressor.flush()


@dataclass(frozen=True)
class Member:
    data: bytes
    #: Files and bytes of content this member carries (for progress reports).
    files: int
    content_bytes: int


GZIP = "gzip"
ZSTD = "zstd"
CODECS = (GZIP, ZSTD)
#: How the remote `tar` reads each codec.
TAR_FLAGS = {GZIP: "-xzpf -", ZSTD: "--zstd -xpf -"}


def tar_zstd_members(
    root: Path, paths: Sequence[str], manifest: Manifest, *, workers: int | None = None
) -> Iterator[Member]:
    """One zstd frame, flushed at chunk boundaries so progress can be counted per chunk."""
    import zstandard

    workers = workers or max(1, min(4, os.cpu_count() or 1))
    compressor = zstandard.ZstdCompressor(level=1, threads=workers).compressobj()
    for chunk in plan_chunks(paths, manifest):
        for path in chunk:
            for piece in _member_pieces(root, manifest[path]):
                data = compressor.compress(piece)
                if data:
                    yield Member(data, 0, 0)
        files = [manifest[path] for path in chunk if manifest[path].kind == "file"]
        flushed = compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        yield Member(flushed, len(files), sum(entry.size for entry in files))
    yield Member(compressor.compress(bytes(tarfile.RECORDSIZE)) + compressor.flush(), 0, 0)


def tar_gz_members(
    root: Path,
    paths: Sequence[str],
    manifest: Manifest,
    *,
    workers: int | None = None,
    level: int = 1,
) -> Iterator[Member]:
    """Yield the gzip members in order; at most ``2 * workers`` chunks are held at once."""
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    chunks = deque(plan_chunks(paths, manifest))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="compress") as pool:
        pending: deque[tuple[list[str], Future[bytes]]] = deque()
        while chunks or pending:
            while chunks and len(pending) < 2 * workers:
                chunk = chunks.popleft()
                pending.append(
                    (chunk, pool.submit(compress_chunk, root, chunk, manifest, level=level))
                )
            chunk, future = pending.popleft()
            files = [manifest[path] for path in chunk if manifest[path].kind == "file"]
            yield Member(future.result(), len(files), sum(entry.size for entry in files))
    yield Member(end_of_archive(), 0, 0)


class SharedArchive:
    """An archive written once to a temporary file and read by several uploads at once.

    Readers follow the writer (like ``tail -f``), so an upload starts with the first member
    instead of waiting for the whole archive.
    """

    def __init__(
        self,
        root: Path,
        paths: Sequence[str],
        manifest: Manifest,
        directory: Path,
        *,
        codec: str = GZIP,
    ) -> None:
        self.codec = codec
        handle, name = tempfile.mkstemp(prefix="changes-", suffix=".tar.gz", dir=directory)
        os.close(handle)
        self.path = Path(name)
        self._condition = threading.Condition()
        # (end offset, files, content bytes) after each member, for progress reports.
        self._marks: list[tuple[int, int, int]] = []
        self._written = 0
        self._done = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._write,
            args=(root, list(paths), manifest, codec),
            name="archive-writer",
            daemon=True,
        )
        self._thread.start()

    def _write(self, root: Path, paths: list[str], manifest: Manifest, codec: str) -> None:
        try:
            with open(self.path, "wb") as output:
                files = content = 0
                members = tar_zstd_members if codec == ZSTD else tar_gz_members
                for member in members(root, paths, manifest):
                    output.write(member.data)
                    output.flush()
                    files += member.files
                    content += member.content_bytes
                    with self._condition:
                        self._written += len(member.data)
                        self._marks.append((self._written, files, content))
                        self._condition.notify_all()
        except BaseException as exc:  # handed to every reader
            with self._condition:
                self._error = exc
        finally:
            with self._condition:
                self._done = True
                self._condition.notify_all()

    def wait(self) -> int:
        """Block until the archive is complete; its size in bytes."""
        with self._condition:
            self._condition.wait_for(lambda: self._done)
            if self._error is not None:
                raise self._error
            return self._written

    def chunks(self) -> Iterator[bytes]:
        """The archive's bytes as they become available."""
        offset = 0
        with open(self.path, "rb") as source:
            while True:
                with self._condition:
                    while self._written <= offset and not self._done:
                        self._condition.wait()
                    if self._error is not None:
                        raise self._error
                    available, done = self._written, self._done
                while offset < available:
                    piece = source.read(min(_READ_BYTES, available - offset))
                    offset += len(piece)
                    yield piece
                if done and offset >= available:
                    return

    def carried(self, offset: int) -> tuple[int, int]:
        """Files and content bytes wholly contained in the archive's first ``offset`` bytes."""
        with self._condition:
            marks = list(self._marks)
        files = content = 0
        for end, member_files, member_content in marks:
            if end > offset:
                break
            files, content = member_files, member_content
        return files, content
