"""Output bytes into log lines, for remote commands (ssh) and build commands alike.

A line is kept up to ``MAX_LINE_CHARS`` characters; the log stores no more of it (docs/
deployments.md, "Output of any shape"). A command printing megabytes without a newline (a
minified bundle, a binary, a progress bar) therefore costs memory and time in proportion to
what is kept, never to what it prints: each byte is looked at a fixed number of times.

A longer line is handed on as a ``CutLine``: ``CUT_MARGIN_CHARS`` characters past the limit are
kept too, so that the log's masking sees a secret lying across the limit whole before it cuts
the line there (builds/logs.py), and the number of bytes left out after that is counted.
"""

from __future__ import annotations

import codecs

#: The longest line the log stores (in characters); longer ones end in ``cut_marker``.
MAX_LINE_CHARS = 64 * 1024
#: Kept past MAX_LINE_CHARS for masking: longer than any secret can reasonably be.
CUT_MARGIN_CHARS = 16 * 1024


class CutLine(str):
    """The first ``MAX_LINE_CHARS + CUT_MARGIN_CHARS`` characters of a longer line;
    ``dropped_bytes`` is the length of the rest, in bytes of UTF-8."""

    dropped_bytes: int = 0


def cut_line(text: str, dropped_bytes: int) -> CutLine:
    line = CutLine(text)
    line.dropped_bytes = dropped_bytes
    return line


def cut_marker(dropped_bytes: int) -> str:
    """What ends a stored line that was cut: ``… [line cut: 123 bytes]``."""
    return f"… [line cut: {dropped_bytes} bytes]"


class LineSplitter:
    """Bytes in, complete lines out (without their ``\\n``, nor the ``\\r`` before it).

    A UTF-8 character cut between two reads stays whole; invalid bytes become U+FFFD. Lines
    longer than MAX_LINE_CHARS come out as ``CutLine``."""

    _KEEP = MAX_LINE_CHARS + CUT_MARGIN_CHARS

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._parts: list[str] = []
        self._kept = 0
        self._dropped_bytes = 0

    def feed(self, data: bytes) -> list[str]:
        text = self._decoder.decode(data)
        lines = []
        start = 0
        while (end := text.find("\n", start)) >= 0:
            self._add(text, start, end)
            lines.append(self._take())
            start = end + 1
        self._add(text, start, len(text))
        return lines

    def finish(self) -> list[str]:
        """The last line, when the output did not end with a newline."""
        rest = self._decoder.decode(b"", final=True)
        self._add(rest, 0, len(rest))
        if not self._parts and not self._dropped_bytes:
            return []
        return [self._take()]

    def _add(self, text: str, start: int, end: int) -> None:
        room = self._KEEP - self._kept
        keep_end = min(end, start + max(room, 0))
        if keep_end > start:
            self._parts.append(text[start:keep_end])
            self._kept += keep_end - start
        if end > keep_end:
            self._dropped_bytes += len(text[keep_end:end].encode("utf-8", "surrogatepass"))

    def _take(self) -> str:
        text = "".join(self._parts)
        dropped = self._dropped_bytes
        self._parts, self._kept, self._dropped_bytes = [], 0, 0
        if dropped:
            return cut_line(text, dropped)
        return text.removesuffix("\r")
