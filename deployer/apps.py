from __future__ import annotations

from pathlib import Path
from typing import Any

from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created

from deployer.datadir import secure_database


class DeployerConfig(AppConfig):
    name = "deployer"
    verbose_name = "Slipway"
    default = True

    def ready(self) -> None:
        connection_created.connect(_secure_sqlite_database, dispatch_uid="slipway-sqlite-mode")


def _secure_sqlite_database(sender: Any, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    # SQLite creates the database (and its -wal, -shm) with the process's umask on first
    # connect: narrow it at once, before anything is written to it.
    if connection.vendor != "sqlite":
        return
    name = str(connection.settings_dict.get("NAME") or "")
    if name and name != ":memory:" and not name.startswith("file:"):
        secure_database(Path(name))


class SlipwayAdminConfig(admin_apps.AdminConfig):
    """Django's admin with Slipway's admin site (deployer.admin_site): its sign-in is ours."""

    default = False
    default_site = "deployer.admin_site.SlipwayAdminSite"
