"""Django for the bench: set up before bench.slipway (or any model) is imported."""

from __future__ import annotations

import os
from pathlib import Path

import django
from django.core.management import call_command


def configure(data_dir: Path) -> None:
    """Point Django at a fresh embedded data directory (SQLite, in-memory broker) and migrate
    it. Local repositories are allowed: the bench's are on this machine. The scaled-out
    variables are dropped so that a developer's shell cannot send the bench elsewhere."""
    os.environ["SLIPWAY_DATA_DIR"] = str(data_dir)
    os.environ["SLIPWAY_ALLOW_LOCAL_REPOSITORIES"] = "true"
    for variable in ("DATABASE_URL", "REDIS_URL"):
        os.environ.pop(variable, None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "deployer.settings")
    django.setup()
    call_command("migrate", verbosity=0)
