from __future__ import annotations

from django.urls import path

from builds.consumers import DeploymentLogConsumer

websocket_urlpatterns = [
    path("ws/deployments/<int:deployment_id>/", DeploymentLogConsumer.as_asgi()),
]
