"""Secrets at rest: Fernet encryption under a key list (the first key encrypts).

A canary row, encrypted when the database is first migrated, is decrypted at start so that a
wrong or missing key fails loudly at once rather than in the middle of a deployment.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db import models

CANARY_PLAINTEXT = "slipway-encryption-canary"


class DecryptionError(Exception):
    """A stored secret cannot be decrypted with any configured key."""


@lru_cache(maxsize=1)
def _fernet() -> MultiFernet:
    keys = []
    for position, key in enumerate(settings.ENCRYPTION_KEYS, start=1):
        try:
            keys.append(Fernet(key.encode()))
        except (ValueError, TypeError):
            raise DecryptionError(
                f"SLIPWAY_ENCRYPTION_KEYS: key {position} is not a valid Fernet key "
                "(32 url-safe base64-encoded bytes)"
            ) from None
    return MultiFernet(keys)


def reset_keys() -> None:
    """Forget the cached keys (after settings.ENCRYPTION_KEYS changed)."""
    _fernet.cache_clear()


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise DecryptionError(
            "A stored secret cannot be decrypted with SLIPWAY_ENCRYPTION_KEYS: "
            "is the key that encrypted it missing from the list?"
        ) from None


def rotate(token: str) -> str:
    """Re-encrypt under the first key."""
    try:
        return _fernet().rotate(token.encode()).decode()
    except InvalidToken:
        raise DecryptionError(
            "A stored secret cannot be decrypted with SLIPWAY_ENCRYPTION_KEYS"
        ) from None


class EncryptedTextField(models.TextField):  # type: ignore[type-arg]
    """Text encrypted in the database; plain ``str`` in Python. Empty stays empty."""

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> str | None:
        if value is None or value == "":
            return value
        return decrypt(value)

    def get_prep_value(self, value: Any) -> Any:
        value = super().get_prep_value(value)
        if value is None or value == "":
            return value
        return encrypt(str(value))


def verify_canary() -> None:
    """Decrypt the stored canary; create it on a fresh database. Raises DecryptionError."""
    from django.db import DatabaseError

    from deployer.models import EncryptionCanary

    try:
        canary = EncryptionCanary.objects.filter(pk=1).first()
    except DatabaseError:
        return  # not migrated yet: migrate creates the canary
    if canary is None:
        EncryptionCanary.objects.get_or_create(pk=1, defaults={"value": CANARY_PLAINTEXT})
        return
    if canary.value != CANARY_PLAINTEXT:
        raise DecryptionError("The encryption canary decrypted to an unexpected value")
