"""WSGI entry point (HTTP only; the ASGI application also serves WebSockets)."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "deployer.settings")

application = get_wsgi_application()
