"""The Celery app. Its settings are the CELERY_* names in deployer/settings.py."""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "deployer.settings")

app = Celery("deployer")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect
def _verify_encryption_keys(**_: object) -> None:
    # A worker with the wrong key would only fail when a deployment needs a secret; fail now.
    from deployer.crypto import verify_canary

    verify_canary()
