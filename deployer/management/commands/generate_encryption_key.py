"""Print a new key for SLIPWAY_ENCRYPTION_KEYS."""

from __future__ import annotations

from typing import Any

from cryptography.fernet import Fernet
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Print a new encryption key (put it first in SLIPWAY_ENCRYPTION_KEYS, then rotate)."

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(Fernet.generate_key().decode())
