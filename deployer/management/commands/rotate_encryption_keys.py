"""Re-encrypt every stored secret under the first key of SLIPWAY_ENCRYPTION_KEYS."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from deployer.crypto import DecryptionError, EncryptedTextField


def encrypted_fields() -> list[tuple[type, list[str]]]:
    found = []
    for model in apps.get_models():
        names = [f.name for f in model._meta.get_fields() if isinstance(f, EncryptedTextField)]
        if names:
            found.append((model, names))
    return found


class Command(BaseCommand):
    help = (
        "Re-encrypt every secret under the first key. Put the new key first in "
        "SLIPWAY_ENCRYPTION_KEYS, keep the old ones after it, run this, then drop the old keys."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        total = 0
        try:
            with transaction.atomic():
                for model, names in encrypted_fields():
                    manager = model._default_manager  # type: ignore[attr-defined]
                    # Reading decrypts with any key of the list; update() encrypts with the first.
                    for row in manager.values("pk", *names).iterator():
                        pk = row.pop("pk")
                        manager.filter(pk=pk).update(**row)
                        total += 1
        except DecryptionError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Re-encrypted {total} rows under the first key.")
