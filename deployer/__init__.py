"""Slipway's Django project package: settings, URLs, ASGI routing and the Celery app."""

from __future__ import annotations

from deployer.celery import app as celery_app

__all__ = ["celery_app"]
