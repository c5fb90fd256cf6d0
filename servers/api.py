"""API views for a project's servers, their releases and server groups."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from builds.api import recorded_deployment_data
from builds.drift_checks import drift_check_create, drift_last, drift_unsupported
from builds.serializers import DeploymentSerializer
from builds.services import deployment_rollback_server, group_switch_back
from deployer.api import (
    Need,
    get_project_for_user,
    get_release_for_user,
    get_server_for_user,
    get_setting_for_user,
)
from projects.api import NO_CONTENT, SettingDetailView, SettingListView
from servers.models import HealthCheck, Server, ServerGroup
from servers.serializers import (
    DriftCheckSerializer,
    DriftStateSerializer,
    GroupSerializer,
    HealthCheckSerializer,
    LockBreakResultSerializer,
    LockBreakSerializer,
    ReleaseSerializer,
    RollbackSerializer,
    ServerCheckSerializer,
    ServerInputSerializer,
    ServerSerializer,
    TrustSerializer,
)
from servers.services import (
    health_check_create,
    health_check_delete,
    health_check_update,
    server_check,
    server_create,
    server_delete,
    server_lock_break,
    server_trust_host_key,
    server_trust_jump_host_key,
    server_update,
)

TAGS = ["servers"]


class ServerListView(APIView):
    @extend_schema(responses=ServerSerializer(many=True), tags=TAGS)
    def get(self, request: Request, slug: str) -> Response:
        membership = get_project_for_user(request, slug)
        servers = list(membership.project.servers.all())
        for server in servers:
            server.project = membership.project
        return Response(ServerSerializer(servers, many=True).data)

    @extend_schema(request=ServerInputSerializer, responses={201: ServerSerializer}, tags=TAGS)
    def post(self, request: Request, slug: str) -> Response:
        membership = get_project_for_user(request, slug, need=Need.CONFIGURE)
        serializer = ServerInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        server = server_create(
            project=membership.project, actor=membership.user, **serializer.validated_data
        )
        return Response(ServerSerializer(server).data, status=status.HTTP_201_CREATED)


class ServerDetailView(APIView):
    @extend_schema(responses=ServerSerializer, tags=TAGS)
    def get(self, request: Request, slug: str, server_id: int) -> Response:
        server, _ = get_server_for_user(request, slug, server_id)
        return Response(ServerSerializer(server).data)

    @extend_schema(
        request=ServerInputSerializer(partial=True), responses=ServerSerializer, tags=TAGS
    )
    def patch(self, request: Request, slug: str, server_id: int) -> Response:
        server, membership = get_server_for_user(request, slug, server_id, need=Need.CONFIGURE)
        serializer = ServerInputSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        server = server_update(server=server, actor=membership.user, **serializer.validated_data)
        return Response(ServerSerializer(server).data)

    @extend_schema(responses=NO_CONTENT, tags=TAGS)
    def delete(self, request: Request, slug: str, server_id: int) -> Response:
        server, membership = get_server_for_user(request, slug, server_id, need=Need.CONFIGURE)
        server_delete(server=server, actor=membership.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ServerCheckView(APIView):
    @extend_schema(
        request=None,
        responses=ServerCheckSerializer,
        operation_id="projects_servers_check",
        tags=TAGS,
        description="Read the host key the server offers; when it is the pinned one, log in "
        "and check that the deploy path is writable and safe (owned by the login user or root, "
        "not writable by group or others, no symlinked releases/, shared/ or .slipway/, current "
        "pointing into releases/), as a deployment does first. Problems on the server's side "
        "are answered with ok=false and an error naming the fix, never with an error status.",
    )
    def post(self, request: Request, slug: str, server_id: int) -> Response:
        server, _ = get_server_for_user(request, slug, server_id, need=Need.DEPLOY)
        result = server_check(server=server)
        return Response(ServerCheckSerializer(dataclasses.asdict(result)).data)


class ServerDriftView(APIView):
    @extend_schema(
        responses=DriftStateSerializer,
        operation_id="projects_servers_drift",
        tags=TAGS,
        description="The newest drift check of the server (files added, changed and removed "
        "in its live release since its deployment, against the manifest Slipway deployed), "
        "whether the server can be checked at all, and the project's on_drift setting. See "
        "docs/drift.md.",
    )
    def get(self, request: Request, slug: str, server_id: int) -> Response:
        server, _ = get_server_for_user(request, slug, server_id)
        reason = drift_unsupported(server) or ""
        return Response(
            DriftStateSerializer(
                {
                    "supported": not reason,
                    "reason": reason,
                    "on_drift": server.project.on_drift,
                    "last_check": drift_last(server),
                }
            ).data
        )

    @extend_schema(
        request=None,
        responses={202: DriftCheckSerializer},
        operation_id="projects_servers_drift_check",
        tags=TAGS,
        description="Queue a drift check of the server (deployers and admins); answers the "
        "check, queued, or the one already queued or running there. 400 naming `server` "
        "for a server that cannot be checked (FTP, in-place SFTP) or has no live release "
        "made by Slipway. Poll GET drift/ for the outcome.",
    )
    def post(self, request: Request, slug: str, server_id: int) -> Response:
        server, membership = get_server_for_user(request, slug, server_id, need=Need.DEPLOY)
        check = drift_check_create(server=server, actor=membership.user)
        return Response(DriftCheckSerializer(check).data, status=status.HTTP_202_ACCEPTED)


class ServerTrustView(APIView):
    @extend_schema(
        request=TrustSerializer,
        operation_id="projects_servers_trust",
        responses=ServerSerializer,
        tags=TAGS,
        description="Pin the server's host key. The fingerprint must be the one the server "
        "offers right now (see check/).",
    )
    def post(self, request: Request, slug: str, server_id: int) -> Response:
        return _trust(request, slug, server_id, server_trust_host_key)


class ServerJumpTrustView(APIView):
    @extend_schema(
        request=TrustSerializer,
        operation_id="projects_servers_jump_host_trust",
        responses=ServerSerializer,
        tags=TAGS,
        description="Pin the host key of the server's jump host. The fingerprint must be the "
        "one the jump host offers right now (see check/: jump_host_key_fingerprint).",
    )
    def post(self, request: Request, slug: str, server_id: int) -> Response:
        return _trust(request, slug, server_id, server_trust_jump_host_key)


def _trust(request: Request, slug: str, server_id: int, service: Callable[..., Server]) -> Response:
    """A trust endpoint: the fingerprint checked against what the far side offers now by
    ``service`` (servers.services), the server answered as it is after."""
    server, membership = get_server_for_user(request, slug, server_id, need=Need.CONFIGURE)
    serializer = TrustSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    server = service(server=server, actor=membership.user, **serializer.validated_data)
    return Response(ServerSerializer(server).data)


class ServerLockBreakView(APIView):
    @extend_schema(
        request=LockBreakSerializer,
        responses=LockBreakResultSerializer,
        operation_id="projects_servers_lock_break",
        tags=TAGS,
        description="Break the deploy lock Slipway keeps on the server (admins; audited as "
        "server.lock_broken). The lock's owner is read over SSH first: a lock held by a "
        "deployment still queued or running, or kept for a command that may still be running, "
        "is refused with 409 unless `force` is true; so is a server that cannot be reached. "
        "No lock: 200 with broken=false.",
    )
    def post(self, request: Request, slug: str, server_id: int) -> Response:
        server, membership = get_server_for_user(request, slug, server_id, need=Need.CONFIGURE)
        serializer = LockBreakSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        result = server_lock_break(
            server=server, user=membership.user, force=serializer.validated_data["force"]
        )
        return Response(LockBreakResultSerializer(dataclasses.asdict(result)).data)


class ServerReleaseListView(APIView):
    @extend_schema(responses=ReleaseSerializer(many=True), tags=TAGS)
    def get(self, request: Request, slug: str, server_id: int) -> Response:
        server, _ = get_server_for_user(request, slug, server_id)
        releases = list(
            server.releases.filter(removed_at__isnull=True).select_related(
                "deployment__triggered_by"
            )
        )
        for release in releases:
            release.server = server
        return Response(ReleaseSerializer(releases, many=True).data)


class ServerReleaseDetailView(APIView):
    @extend_schema(responses=ReleaseSerializer, tags=TAGS)
    def get(self, request: Request, slug: str, server_id: int, name: str) -> Response:
        release, _ = get_release_for_user(request, slug, server_id, name)
        return Response(ReleaseSerializer(release).data)


class ServerRollbackView(APIView):
    @extend_schema(
        request=RollbackSerializer,
        responses={201: DeploymentSerializer},
        operation_id="projects_servers_rollback",
        tags=["deployments"],
    )
    def post(self, request: Request, slug: str, server_id: int) -> Response:
        server, membership = get_server_for_user(request, slug, server_id, need=Need.DEPLOY)
        serializer = RollbackSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        deployment = deployment_rollback_server(
            server=server,
            user=membership.user,
            release=serializer.validated_data.get("release", ""),
            lock_reason=serializer.validated_data.get("lock_reason", ""),
        )
        return Response(recorded_deployment_data(deployment), status=status.HTTP_201_CREATED)


@extend_schema(tags=["groups"])
class GroupListView(SettingListView):
    model = ServerGroup
    serializer_class = GroupSerializer


@extend_schema(tags=["groups"])
class GroupDetailView(SettingDetailView):
    model = ServerGroup
    serializer_class = GroupSerializer


class GroupSwitchBackView(APIView):
    @extend_schema(
        request=None,
        responses={202: DeploymentSerializer},
        operation_id="groups_switch_back",
        tags=["groups"],
        description="Blue-green: send the group's traffic back to the other colour, whose "
        "servers are as the deployment before left them (no server is changed, only the "
        "router). Answers the deployment of kind switch that does it; the live colour "
        "changes once the router took it. 400 unless the group is blue-green with a live "
        "colour and the other colour has releases; 409 while a deployment is queued or "
        "running on its servers.",
    )
    def post(self, request: Request, slug: str, pk: int) -> Response:
        group, membership = get_setting_for_user(request, slug, ServerGroup, pk, need=Need.DEPLOY)
        deployment = group_switch_back(group=group, user=membership.user)
        return Response(recorded_deployment_data(deployment), status=status.HTTP_202_ACCEPTED)


@extend_schema(tags=["health checks"])
class HealthCheckListView(SettingListView):
    model = HealthCheck
    serializer_class = HealthCheckSerializer

    def perform_create(self, serializer: Any) -> None:
        serializer.instance = health_check_create(
            project=self.membership.project,
            actor=self.membership.user,
            **serializer.validated_data,
        )


@extend_schema(tags=["health checks"])
class HealthCheckDetailView(SettingDetailView):
    model = HealthCheck
    serializer_class = HealthCheckSerializer

    def perform_update(self, serializer: Any) -> None:
        serializer.instance = health_check_update(
            health_check=serializer.instance,
            actor=self.membership.user,
            **serializer.validated_data,
        )

    def perform_destroy(self, instance: Any) -> None:
        health_check_delete(health_check=instance, actor=self.membership.user)
