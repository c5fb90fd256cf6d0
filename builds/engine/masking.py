"""Masking of secrets in log lines, before a line is stored or sent anywhere."""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "********"
# user:password@ in any URL-looking text (tokens in clone URLs, basic auth in webhooks).
_URL_CREDENTIALS = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/\s:@]*):(?P<secret>[^/\s@]+)@"
)
# Secrets shorter than this would mask ordinary words and leak more by their pattern.
MIN_SECRET_LENGTH = 4


class Masker:
    """Replaces every known secret value, longest first, and credentials inside URLs."""

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
        ordered = sorted(values, key=len, reverse=True)
        self._pattern = (
            re.compile("|".join(re.escape(value) for value in ordered)) if ordered else None
        )

    def __call__(self, text: str) -> str:
        text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
        if self._pattern is not None:
            text = self._pattern.sub(MASK, text)
        return text
