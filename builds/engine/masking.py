"""Masking of secrets in log lines, before a line is stored or sent anywhere.

Masking costs time linear in the text's length, whatever the text (a megabyte on one line, a
run of letters that looks like the start of a URL) and however many secrets there are: the
secrets are found in one pass by an Aho-Corasick automaton, and the one regular expression
(credentials in URLs) cannot backtrack over more than one stretch of text once.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterable, Iterator
from urllib.parse import unquote, urlsplit

from ahocorasick_rs import AhoCorasick, MatchKind

from builds.engine.variables import DOCUMENTED, VARIABLE

MASK = "********"
# user:password@ in any URL-looking text (tokens in clone URLs, basic auth in webhooks). The
# scheme is only tried where a run of scheme characters starts (the lookbehind), so a long run
# of letters is scanned once, not once per letter.
_SCHEME_CHARS = "a-zA-Z0-9+.-"
_URL_CREDENTIALS = re.compile(
    rf"(?<![{_SCHEME_CHARS}])(?P<lead>[0-9+.-]*)"
    rf"(?P<scheme>[a-zA-Z][{_SCHEME_CHARS}]*://)(?P<user>[^/\s:@]*):(?P<secret>[^/\s@]+)@"
)
# Control characters: where a printed secret may be split, or what a command turns an escape
# sequence into (`echo -e`, `printf %b`).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Backslash escapes as `echo -e` and `printf %b` read them.
_ESCAPE = re.compile(r"\\(?:0([0-7]{0,3})|([0-7]{1,3})|x([0-9a-fA-F]{1,2})|(.))", re.DOTALL)
_SIMPLE_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "e": "\x1b",
    "E": "\x1b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
}
_NAMED_CONTROLS = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Secrets shorter than this would mask ordinary words and leak more by their pattern.
MIN_SECRET_LENGTH = 4
# A base64 form shorter than this would match by chance in ordinary output.
_MIN_ENCODED_LENGTH = 8
# `KEY=value`, `key: value`, `"key": "value",`, `'key' => 'value',`, `export KEY=value`.
_ASSIGNMENT = re.compile(
    r"""^\s*(?:export\s+)?["']?(?P<key>[\w.\-\[\]]+)["']?"""
    r"""\s*(?:=>|[:=])\s*(?P<value>.*?)\s*[,;]?\s*$"""
)
# A parameter's value in a URL's query (`?key=...&token=...`).
_QUERY_VALUE = re.compile(r"[?&][^=&\s]+=(?P<value>[^&#\s]+)")
# Segments of a webhook URL's path at least this long are taken for tokens.
_MIN_PATH_TOKEN_LENGTH = 12
# Values of a config file that say nothing: numbers, booleans, empty collections.
_PLAIN_VALUE = re.compile(r"^(?:[-+]?[0-9.]+|true|false|null|none|nil|yes|no|on|off|\[\]|\{\})$")


def base64_forms(secret: str) -> list[str]:
    """The runs of base64 text that ``secret`` always produces when encoded, whatever bytes
    precede it (three alignments, each without its first and last, partly foreign, character).
    """
    raw = secret.encode()
    forms = []
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw).decode().rstrip("=")
        start = -(-8 * offset // 6)  # the first character made of the secret's bits only
        end = (8 * (offset + len(raw))) // 6  # past the last one
        form = encoded[start:end]
        if len(form) >= _MIN_ENCODED_LENGTH:
            forms.append(form)
    return forms


def unescaped(text: str) -> str:
    """``text`` after `echo -e` / `printf %b` read its backslash escapes (``\\n`` becomes a
    newline, ``\\033`` and ``\\e`` an escape character, ``\\x41`` an ``A``)."""

    def replace(match: re.Match[str]) -> str:
        zero_octal, octal, hexadecimal, other = match.groups()
        if zero_octal is not None:
            return chr(int(zero_octal or "0", 8) & 0xFF)
        if octal is not None:
            return chr(int(octal, 8) & 0xFF)
        if hexadecimal is not None:
            return chr(int(hexadecimal, 16))
        return _SIMPLE_ESCAPES.get(other, match.group(0))

    return _ESCAPE.sub(replace, text)


_POSIX_ECHO_ESCAPE = re.compile(r"\\(0[0-7]{0,3}|[abcfnrtv\\])")


def unescaped_by_posix_echo(text: str) -> str:
    """``text`` as dash's (POSIX/XSI) ``echo`` prints it, the ``sh`` of Debian and Ubuntu:
    ``\t``, ``\n``, ``\0NNN``... are read, other sequences (``\x41``) stay as they are.
    Source: POSIX.1-2017 echo, XSI conformant systems."""

    def replace(match: re.Match[str]) -> str:
        escape = match.group(1)
        if escape.startswith("0"):
            return chr(int(escape[1:] or "0", 8) & 0xFF)
        return _SIMPLE_ESCAPES.get(escape, escape)

    return _POSIX_ECHO_ESCAPE.sub(replace, text)


def escaped_forms(text: str) -> list[str]:
    """How programs print ``text``'s control characters as text: C and Python (``\\n``,
    ``\\x1b``), JSON (``\\u001b``) and octal (``\\033``); [] when it has none."""
    if not _CONTROL.search(text):
        return []
    forms = {
        _escape_controls(text, lambda code: f"\\x{code:02x}"),
        _escape_controls(text, lambda code: f"\\u{code:04x}"),
        _escape_controls(text, lambda code: f"\\{code:03o}"),
    }
    return sorted(forms)


def _escape_controls(text: str, write: Callable[[int], str]) -> str:
    return _CONTROL.sub(
        lambda match: _NAMED_CONTROLS.get(match.group(0)) or write(ord(match.group(0))), text
    )


def printed_forms(secret: str) -> Iterator[str]:
    """Every text that ``secret`` may appear as in a log line: as it is, as a command turns
    its escape sequences into control characters, with its control characters written as
    escapes, and each piece between control characters (logs are lines, and a terminal
    drops what it cannot show). Each with its base64 forms; pieces shorter than
    MIN_SECRET_LENGTH are left out."""
    transformed = {secret, unescaped(secret), unescaped_by_posix_echo(secret)}
    for form in list(transformed):
        transformed.update(escaped_forms(form))
    for form in transformed:
        for part in [form, *_CONTROL.split(form)]:
            part = part.strip()
            if len(part) >= MIN_SECRET_LENGTH:
                yield part
                yield from base64_forms(part)


def config_file_secrets(body: str) -> list[str]:
    """What a config file body puts in the log when a command prints it, or prints a value
    from it: each line and each assigned value (``KEY=value``, ``key: value``...), minus
    numbers and booleans, and each value in a URL's query; cut at Slipway's ``%variables%``
    (their values are not the file's secrets; any other ``%name%`` stays in the file as
    written, so it is masked like the rest).

    A config file is write-only for everyone who may not configure the project, so its whole
    text is treated as a secret; an ordinary word assigned in it (``production``) is masked
    wherever it appears in that deployment's log."""
    found: list[str] = []
    for line in body.splitlines():
        parts = [line]
        assignment = _ASSIGNMENT.match(line)
        if assignment:
            value = assignment["value"].strip().strip("\"'`")
            if not _PLAIN_VALUE.match(value.lower()):
                parts.append(value)
        parts += [match["value"] for match in _QUERY_VALUE.finditer(line)]
        for part in parts:
            found.extend(piece.strip() for piece in _outside_variables(part))
    return [piece for piece in found if len(piece) >= MIN_SECRET_LENGTH]


def _outside_variables(text: str) -> list[str]:
    """The pieces of ``text`` around Slipway's own ``%variables%`` (variables.DOCUMENTED),
    found as ``substitute`` finds them: another ``%name%`` is left in the file as written,
    so it is text like the rest."""
    pieces = []
    position = 0
    for match in VARIABLE.finditer(text):
        if match.group(1) in DOCUMENTED:
            pieces.append(text[position : match.start()])
            position = match.end()
    pieces.append(text[position:])
    return pieces


_SECTION = re.compile(r"^\s*\[[\w .\-]+\]\s*$")
# PEM armour (a private key, a certificate): the lines between are base64, and its last line,
# ending in `=` padding, reads like `key=` when it holds no `+` or `/`.
_PEM_BEGIN = re.compile(r"-----BEGIN ")
_PEM_END = re.compile(r"-----END ")
# What a skeleton keeps of an assignment's key: a configuration name, ASCII.
_KEY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}")
# Base64 (a line of a key or certificate) rather than a name: a long run of letters and
# digits with upper and lower case letters in it.
_BASE64_RUN = re.compile(r"(?=.*[a-z])(?=.*[A-Z])[A-Za-z0-9]{20,}")


def _is_key_name(key: str) -> bool:
    return bool(_KEY_NAME.fullmatch(key)) and not _BASE64_RUN.fullmatch(key)


def config_file_skeleton(body: str) -> str:
    """A config file with its secrets taken out, for a project template (docs/templates.md):
    blank lines, INI section headers and each assignment's key (``KEY=``, ``key:``,
    ``'key' =>``) stay, when the key is a name (``_is_key_name``); an assigned value stays
    only when it is nothing but Slipway's ``%variables%``; every other line (a comment, a
    value on a line of its own) goes, and so does every line of a PEM block, from its
    ``-----BEGIN`` line to its ``-----END`` line (to the end of the file when it has none).
    Nothing ``config_file_secrets`` would mask is left."""
    kept: list[str] = []
    in_pem = False
    for line in body.splitlines():
        begin = _PEM_BEGIN.search(line)
        if in_pem or begin:
            # The block goes on until a line with -----END (after this line's -----BEGIN).
            in_pem = not _PEM_END.search(line, begin.end() if begin else 0)
            continue
        assignment = _ASSIGNMENT.match(line)
        if not line.strip() or _SECTION.match(line):
            kept.append(line)
        elif assignment and _is_key_name(assignment["key"]):
            value = assignment["value"]
            only_variables = value and not "".join(_outside_variables(value)).strip()
            kept.append(line if only_variables else line[: assignment.start("value")].rstrip())
    return "\n".join(kept) + ("\n" if kept else "")


def url_secrets(url: str) -> list[str]:
    """The password (a token) of ``https://user:token@host/...``, as written and decoded."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return []
    return [password, unquote(password)] if password else []


def webhook_url_secrets(url: str) -> list[str]:
    """A chat webhook's URL is its credential (Slack's and Discord's token is in the path):
    the whole URL, its password, each long path segment and each query value."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    segments = [s for s in parts.path.split("/") if len(s) >= _MIN_PATH_TOKEN_LENGTH]
    query = [m["value"] for m in _QUERY_VALUE.finditer("?" + parts.query)] if parts.query else []
    return [url, *url_secrets(url), *segments, *query]


class Masker:
    """Replaces every known secret value in any printed form (see ``printed_forms``),
    leftmost and longest first, and credentials inside URLs."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values: set[str] = set()
        for secret in secrets:
            if secret:
                values.update(printed_forms(secret))
        self._automaton = (
            AhoCorasick(sorted(values), matchkind=MatchKind.LeftmostLongest) if values else None
        )

    def __call__(self, text: str) -> str:
        """``text`` with every secret replaced by MASK; time linear in ``len(text)``."""
        if "://" in text:
            text = _URL_CREDENTIALS.sub(
                lambda m: f"{m['lead']}{m['scheme']}{m['user']}:{MASK}@", text
            )
        spans = self._secret_spans(text)
        if not spans:
            return text
        pieces = []
        position = 0
        for start, end in spans:
            pieces += [text[position:start], MASK]
            position = end
        pieces.append(text[position:])
        return "".join(pieces)

    def safe_cut(self, text: str, position: int) -> int:
        """``position``, or an earlier one, that does not fall inside a secret in ``text``
        (where a long line may be cut without leaving part of a secret before the cut)."""
        for start, end in self._secret_spans(text):
            if start < position < end:
                return start
            if start >= position:
                break
        if "://" in text:
            for match in _URL_CREDENTIALS.finditer(text):
                if match.start() < position < match.end():
                    return match.start()
                if match.start() >= position:
                    break
        return position

    def _secret_spans(self, text: str) -> list[tuple[int, int]]:
        if self._automaton is None:
            return []
        return [(start, end) for _, start, end in self._automaton.find_matches_as_indexes(text)]
