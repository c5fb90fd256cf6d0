"""Create the `admin` user on first run (non-interactive)."""

from __future__ import annotations

import os
import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the admin user if it does not exist; print its password once."

    def handle(self, *args: Any, **options: Any) -> None:
        user_model = get_user_model()
        if user_model.objects.filter(username="admin").exists():
            return
        password = settings.ADMIN_PASSWORD or secrets.token_urlsafe(12)
        user_model.objects.create_superuser("admin", email="", password=password)
        if settings.ADMIN_PASSWORD:
            self.stdout.write("Created user 'admin' with the password from SLIPWAY_ADMIN_PASSWORD.")
            return
        path = settings.DATA_DIR / "admin-password.txt"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(password + "\n")
        self.stdout.write(
            "\n"
            "  Created user 'admin' with password:  " + password + "\n"
            f"  (shown once; also written to {path}, mode 0600)\n"
        )
