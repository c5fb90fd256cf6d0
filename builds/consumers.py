"""Live deployment logs over WebSockets.

The consumer checks access, joins the deployment's group, then replays stored lines after the
client's last sequence number. Joining before replaying means no line falls between the two;
the client drops any line whose seq it already has.

Each socket also joins its user's group (builds.logs.user_group_name): when the user's access
changes (removed from the project, role changed, deactivated), projects.services.
close_user_sockets sends ``access.revoked`` there, and every socket whose access is gone
says so and closes at once.
"""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.contrib.sessions.models import Session
from django.utils import timezone
from django_otp import DEVICE_ID_SESSION_KEY

from builds import presenters
from builds.logs import group_name, line_payload, stored_lines_after, user_group_name
from builds.models import FINAL, Deployment
from projects.accounts import has_two_factor, must_enrol

REPLAY_PAGE = 1000
# The close code for "not allowed" (4000-4999 are the application's own).
CLOSE_FORBIDDEN = 4403


class DeploymentLogConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    deployment_id: int
    project_id: int
    user_id: int
    groups_joined: list[str]

    async def connect(self) -> None:
        user = self.scope.get("user")
        self.deployment_id = int(self.scope["url_route"]["kwargs"]["deployment_id"])
        self.groups_joined = []
        if user is None or not user.is_authenticated or not user.is_active:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.user_id = int(user.pk)
        project_id = await self._project_if_allowed()
        if project_id is None:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.project_id = project_id
        # The user's group first: a revocation sent between the check and the join of the
        # deployment's group still reaches this socket.
        for group in (user_group_name(self.user_id), group_name(self.deployment_id)):
            await self.channel_layer.group_add(group, self.channel_name)
            self.groups_joined.append(group)
        if await self._project_if_allowed() is None:  # revoked while joining
            await self.close(code=CLOSE_FORBIDDEN)
            return
        await self.accept()

    async def disconnect(self, code: int) -> None:
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        after = content.get("after", 0) if isinstance(content, dict) else 0
        if not isinstance(after, int) or after < 0:
            after = 0
        more = True
        while more:
            lines, more = await self._lines_after(after)
            if lines:
                await self.send_json({"type": "lines", "lines": lines})
                after = int(lines[-1]["seq"])
        await self.send_json({"type": "status", **await self._status()})

    async def log_lines(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "lines", "lines": event["lines"]})

    async def deployment_status(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "status", **event["status"]})

    async def access_revoked(self, event: dict[str, Any]) -> None:
        """The user's access changed (``event["project_id"]``, or None for every project):
        close this socket if it no longer allows seeing the deployment."""
        project_id = event.get("project_id")
        if project_id is not None and project_id != self.project_id:
            return
        if await self._project_if_allowed() is not None:
            return  # e.g. a role lowered to viewer: still allowed to read the log
        await self.send_json(
            {"type": "access_revoked", "message": "Your access to this project was revoked."}
        )
        await self.close(code=CLOSE_FORBIDDEN)

    async def _project_if_allowed(self) -> int | None:
        project_id = await database_sync_to_async(self._project_if_allowed_sync)()
        return None if project_id is None else int(project_id)

    async def _lines_after(self, after: int) -> tuple[list[dict[str, Any]], bool]:
        lines, more = await database_sync_to_async(self._lines_after_sync)(after)
        return list(lines), bool(more)

    async def _status(self) -> dict[str, object]:
        return dict(await database_sync_to_async(self._status_sync)())

    def _project_if_allowed_sync(self) -> int | None:
        """The deployment's project id if the user is (still) an active member of it, signed
        in through a session that still exists and that passed two-factor sign-in where the
        account or the site asks for it (the same rules as projects.middleware, which
        WebSockets do not pass through).

        Read afresh each time: the socket must not outlive the access it was opened with.
        """
        session = self.scope.get("session")
        session_key = getattr(session, "session_key", None)
        if (
            session is None
            or not session_key
            or not Session.objects.filter(
                session_key=session_key, expire_date__gt=timezone.now()
            ).exists()
        ):
            return None
        user = self.scope["user"]
        if must_enrol(user) or (has_two_factor(user) and not session.get(DEVICE_ID_SESSION_KEY)):
            return None
        return (
            Deployment.objects.filter(
                pk=self.deployment_id,
                project__memberships__user_id=self.user_id,
                project__memberships__user__is_active=True,
            )
            .values_list("project_id", flat=True)
            .first()
        )

    def _lines_after_sync(self, after: int) -> tuple[list[dict[str, Any]], bool]:
        lines, more = stored_lines_after(self.deployment_id, after, REPLAY_PAGE)
        return [line_payload(line) for line in lines], more

    def _status_sync(self) -> dict[str, object]:

        deployment = Deployment.objects.get(pk=self.deployment_id)
        return {**presenters.deployment_status(deployment), "complete": deployment.status in FINAL}
