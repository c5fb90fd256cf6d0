"""ASGI entry point: HTTP through Django, WebSockets through Channels."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "deployer.settings")
# Django must be set up before the routing imports consumers (and through them, models).
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from builds.routing import websocket_urlpatterns  # noqa: E402
from builds.webhook_door import WebhookDoor  # noqa: E402
from deployer import outbox  # noqa: E402

if settings.PROCESS_ROLE == "web":
    # Requests answer once their work is committed; a thread sends the Celery messages.
    outbox.start_background_sender()

application = ProtocolTypeRouter(
    {
        # Webhook deliveries are answered by their own door, everything else by Django.
        "http": WebhookDoor(django_asgi_app),
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)
