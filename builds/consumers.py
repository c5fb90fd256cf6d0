"""Live deployment logs over WebSockets.

The consumer checks access, joins the deployment's group, then replays stored lines after the
client's last sequence number. Joining before replaying means no line falls between the two;
the client drops any line whose seq it already has.
"""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from builds.logs import group_name, line_payload
from builds.models import FINAL, Deployment, LogLine

REPLAY_PAGE = 1000


class DeploymentLogConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    deployment_id: int
    group: str

    async def connect(self) -> None:
        user = self.scope.get("user")
        self.deployment_id = int(self.scope["url_route"]["kwargs"]["deployment_id"])
        if user is None or not user.is_authenticated or not await self._can_view(user):
            await self.close(code=4403)
            return
        self.group = group_name(self.deployment_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        after = content.get("after", 0) if isinstance(content, dict) else 0
        if not isinstance(after, int) or after < 0:
            after = 0
        while True:
            lines = await self._lines_after(after)
            if lines:
                await self.send_json({"type": "lines", "lines": lines})
                after = int(lines[-1]["seq"])
            if len(lines) < REPLAY_PAGE:
                break
        await self.send_json({"type": "status", **await self._status()})

    async def log_lines(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "lines", "lines": event["lines"]})

    async def deployment_status(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "status", **event["status"]})

    async def _can_view(self, user: Any) -> bool:
        return bool(await database_sync_to_async(self._can_view_sync)(user))

    async def _lines_after(self, after: int) -> list[dict[str, Any]]:
        return list(await database_sync_to_async(self._lines_after_sync)(after))

    async def _status(self) -> dict[str, object]:
        return dict(await database_sync_to_async(self._status_sync)())

    def _can_view_sync(self, user: Any) -> bool:
        return Deployment.objects.filter(
            pk=self.deployment_id, project__memberships__user_id=user.pk
        ).exists()

    def _lines_after_sync(self, after: int) -> list[dict[str, Any]]:
        lines = LogLine.objects.filter(deployment_id=self.deployment_id, seq__gt=after)[
            :REPLAY_PAGE
        ]
        return [line_payload(line) for line in lines]

    def _status_sync(self) -> dict[str, object]:
        from builds.presenters import deployment_status

        deployment = Deployment.objects.get(pk=self.deployment_id)
        return {**deployment_status(deployment), "complete": deployment.status in FINAL}
