"""Typed reading of the environment: every setting comes from here, and a bad value fails
at start with a message that names the variable."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse


class ConfigurationError(Exception):
    """A variable of the environment holds a value Slipway cannot use."""


def string(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def boolean(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ConfigurationError(
        f"{name}={raw!r} is not a boolean: use true/false, yes/no, on/off or 1/0"
    )


def choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = string(name, default) or default
    if value not in choices:
        raise ConfigurationError(f"{name}={value!r} must be one of: {', '.join(choices)}")
    return value


def integer(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a whole number") from None
    if minimum is not None and value < minimum:
        raise ConfigurationError(f"{name}={value} is below the minimum of {minimum}")
    return value


def strings(name: str, default: str = "") -> list[str]:
    return [part.strip() for part in string(name, default).split(",") if part.strip()]


def url(name: str, schemes: tuple[str, ...]) -> str:
    """An optional URL whose scheme must be one of ``schemes``; "" when unset."""
    raw = string(name)
    if not raw:
        return ""
    parsed = urlparse(raw)
    if parsed.scheme not in schemes:
        expected = ", ".join(f"{scheme}://" for scheme in schemes)
        raise ConfigurationError(
            f"{name} must start with one of {expected} (got {parsed.scheme or 'no scheme'}://)"
        )
    if not parsed.hostname and parsed.scheme not in {"sqlite", "unix"}:
        raise ConfigurationError(f"{name} has no host name")
    return raw


def directory(name: str, default: Path) -> Path:
    raw = string(name)
    path = Path(raw).expanduser() if raw else default
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(
            f"{name}={str(path)!r} cannot be created: {exc.strerror}"
        ) from None
    if not os.access(path, os.W_OK):
        raise ConfigurationError(f"{name}={str(path)!r} is not writable")
    return path.resolve()
