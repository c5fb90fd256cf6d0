"""Models of the project package itself: only the encryption canary."""

from __future__ import annotations

from django.db import models

from deployer.crypto import EncryptedTextField


class EncryptionCanary(models.Model):
    """A known value encrypted with the first key, decrypted at every start."""

    value = EncryptedTextField()

    def __str__(self) -> str:
        return "encryption canary"
