"""Serve Slipway over HTTP and WebSockets; in the embedded mode, run the worker in-process."""

from __future__ import annotations

import copy
from typing import Any

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connections
from uvicorn.config import LOGGING_CONFIG

from deployer.crypto import DecryptionError, verify_canary


class Command(BaseCommand):
    help = "Serve Slipway on SLIPWAY_BIND (default 127.0.0.1:8000)."

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            verify_canary()
        except DecryptionError as exc:
            raise CommandError(str(exc)) from None
        host, _, port = settings.BIND.rpartition(":")
        if not host or not port.isdigit():
            raise CommandError(f"SLIPWAY_BIND={settings.BIND!r} must look like HOST:PORT")
        if settings.EMBEDDED_WORKER:
            from builds.reconcile import deployments_recover_after_restart
            from deployer.embedded import start_worker

            start_worker()
            deployments_recover_after_restart()
        # This thread serves no request: give its connection back (to the pool, if any).
        connections.close_all()
        self.stdout.write(f"Slipway is serving on http://{settings.BIND}/", ending="\n")
        self.stdout.flush()
        uvicorn.run(
            "deployer.asgi:application",
            host=host.strip("[]"),
            port=int(port),
            lifespan="off",
            log_level=settings.LOG_LEVEL.lower(),
            log_config=access_log_config(),
            proxy_headers=True,
            ws_ping_interval=20,
            # Several processes share the socket (SLIPWAY_WEB_WORKERS); each has its own
            # database pool. Never more than one with the embedded worker (settings refuse).
            workers=settings.WEB_WORKERS,
        )


def access_log_config() -> dict[str, Any]:
    """uvicorn's own logging set-up, with webhook tokens hidden from the access log."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["hide_webhook_tokens"] = {
        "()": "deployer.logfilters.HideWebhookTokens"
    }
    config["handlers"]["access"].setdefault("filters", []).append("hide_webhook_tokens")
    return config
