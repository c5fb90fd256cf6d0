"""Masking of secrets in log lines, before a line is stored or sent anywhere."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

from builds.engine.variables import VARIABLE

MASK = "********"
# user:password@ in any URL-looking text (tokens in clone URLs, basic auth in webhooks).
_URL_CREDENTIALS = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/\s:@]*):(?P<secret>[^/\s@]+)@"
)
# Secrets shorter than this would mask ordinary words and leak more by their pattern.
MIN_SECRET_LENGTH = 4
# A base64 form shorter than this would match by chance in ordinary output.
_MIN_ENCODED_LENGTH = 8
# `KEY=value`, `key: value`, `"key": "value",`, `'key' => 'value',`, `export KEY=value`.
_ASSIGNMENT = re.compile(
    r"""^\s*(?:export\s+)?["']?[\w.\-\[\]]+["']?\s*(?:=>|[:=])\s*(?P<value>.*?)\s*[,;]?\s*$"""
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


def config_file_secrets(body: str) -> list[str]:
    """What a config file body puts in the log when a command prints it, or prints a value
    from it: each line and each assigned value (``KEY=value``, ``key: value``...), minus
    numbers and booleans, and each value in a URL's query; cut at ``%variables%`` (their values are not the file's secrets).

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
            found.extend(piece.strip() for piece in VARIABLE.split(part)[::2])
    return [piece for piece in found if len(piece) >= MIN_SECRET_LENGTH]


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
    """Replaces every known secret value (and its base64 forms), longest first, and
    credentials inside URLs."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values = set()
        for secret in secrets:
            if not secret:
                continue
            # A multi-line secret (a private key) is masked line by line, since logs are lines.
            for part in [secret, *secret.splitlines()]:
                part = part.strip()
                if len(part) >= MIN_SECRET_LENGTH:
                    values.add(part)
                    values.update(base64_forms(part))
        ordered = sorted(values, key=len, reverse=True)
        self._pattern = (
            re.compile("|".join(re.escape(value) for value in ordered)) if ordered else None
        )

    def __call__(self, text: str) -> str:
        text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
        if self._pattern is not None:
            text = self._pattern.sub(MASK, text)
        return text

    def safe_cut(self, text: str, position: int) -> int:
        """``position``, or an earlier one, that does not fall inside a secret in ``text``
        (where a long line may be cut in two without leaving half a secret on each side)."""
        if self._pattern is not None:
            for match in self._pattern.finditer(text):
                if match.start() < position < match.end():
                    return match.start()
                if match.start() >= position:
                    break
        for match in _URL_CREDENTIALS.finditer(text):
            if match.start() < position < match.end():
                return match.start()
        return position
