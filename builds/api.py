"""API views for deployments: start, read, follow the log, cancel, roll back."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from builds.models import Deployment
from builds.serializers import (
    DeploymentCreateSerializer,
    DeploymentPageSerializer,
    DeploymentSerializer,
    DeploymentSummarySerializer,
    LogQuerySerializer,
    LogSerializer,
)
from builds.services import (
    deployment_cancel,
    deployment_log_page,
    deployment_request_abort,
    deployment_request_promotion,
    deployment_rollback,
    deployment_start_with_strategy,
)
from deployer.api import Need, Pagination, get_deployment_for_user, get_project_for_user
from deployer.db import UNAVAILABLE_ERRORS, retrying

TAGS = ["deployments"]


def _with_related(deployments: Any) -> Any:
    return deployments.select_related("project", "triggered_by", "group").prefetch_related(
        "targets__server"
    )


@retrying
def deployment_data(deployment_id: int) -> dict[str, Any]:
    """The full answer for one deployment, read fresh from the database (a lost connection
    is retried, deployer.db)."""
    deployment = _with_related(Deployment.objects).prefetch_related("steps").get(pk=deployment_id)
    return dict(DeploymentSerializer(deployment).data)


def recorded_deployment_data(deployment: Deployment) -> dict[str, Any]:
    """The answer after a request changed ``deployment`` (committed): its full data, or, when
    the database cannot be read back, its id and status. Never an error, which would tell the
    caller to try again and so record the request twice."""
    try:
        return deployment_data(deployment.pk)
    except UNAVAILABLE_ERRORS:
        return {
            "id": deployment.pk,
            "status": deployment.status,
            "detail": "Recorded. Slipway's database did not answer when reading it back; "
            "GET the deployment for the rest.",
        }


class ProjectDeploymentListView(APIView):
    @extend_schema(
        responses=DeploymentPageSerializer,
        operation_id="projects_deployments_list",
        parameters=[
            OpenApiParameter("page", int, description="Page number, from 1."),
            OpenApiParameter("page_size", int, description="Deployments per page (≤ 200)."),
        ],
        tags=TAGS,
        description="The project's deployments, newest first, paginated.",
    )
    def get(self, request: Request, slug: str) -> Response:
        membership = get_project_for_user(request, slug)
        paginator = Pagination()
        page: list[Deployment] | None = paginator.paginate_queryset(
            _with_related(membership.project.deployments.order_by("-created_at", "-id")),
            request,
            view=self,
        )
        return paginator.get_paginated_response(DeploymentSummarySerializer(page, many=True).data)

    @extend_schema(
        request=DeploymentCreateSerializer, responses={201: DeploymentSerializer}, tags=TAGS
    )
    def post(self, request: Request, slug: str) -> Response:
        membership = get_project_for_user(request, slug, need=Need.DEPLOY)
        serializer = DeploymentCreateSerializer(
            data=request.data, context={"project": membership.project}
        )
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        deployment = deployment_start_with_strategy(
            strategy=data.get("strategy", ""),
            project=membership.project,
            user=membership.user,
            servers=data.get("servers", []),
            group=data.get("group"),
            revision=data.get("revision", ""),
            full=data["full"],
            preview=data["preview"],
            skip_build=data["skip_build"],
            skip_cache=data["skip_cache"],
        )
        return Response(recorded_deployment_data(deployment), status=status.HTTP_201_CREATED)


class DeploymentDetailView(APIView):
    @extend_schema(responses=DeploymentSerializer, tags=TAGS)
    def get(self, request: Request, deployment_id: int) -> Response:
        deployment, _ = get_deployment_for_user(request, deployment_id)
        return Response(deployment_data(deployment.pk))


class DeploymentLogView(APIView):
    @extend_schema(parameters=[LogQuerySerializer], responses=LogSerializer, tags=TAGS)
    def get(self, request: Request, deployment_id: int) -> Response:
        deployment, _ = get_deployment_for_user(request, deployment_id)
        query = LogQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        after: int = query.validated_data["after"]
        page = deployment_log_page(deployment, after=after, limit=query.validated_data["limit"])
        return Response(
            LogSerializer(
                {
                    "lines": page.lines,
                    "complete": page.complete,
                    "next_after": page.lines[-1].seq if page.lines else after,
                    "status": page.status,
                }
            ).data
        )


class DeploymentCancelView(APIView):
    @extend_schema(
        request=None,
        responses={202: DeploymentSerializer},
        operation_id="deployments_cancel",
        tags=TAGS,
        description="Cancel a queued deployment, or ask a running one to stop at its next "
        "safe point. 409 when it already finished.",
    )
    def post(self, request: Request, deployment_id: int) -> Response:
        deployment, membership = get_deployment_for_user(request, deployment_id, need=Need.DEPLOY)
        deployment_cancel(deployment=deployment, user=membership.user)
        return Response(recorded_deployment_data(deployment), status=status.HTTP_202_ACCEPTED)


class DeploymentRollbackView(APIView):
    @extend_schema(
        request=None,
        responses={201: DeploymentSerializer},
        operation_id="deployments_rollback",
        tags=TAGS,
        description="Undo this deployment on each server where it succeeded.",
    )
    def post(self, request: Request, deployment_id: int) -> Response:
        deployment, membership = get_deployment_for_user(request, deployment_id, need=Need.DEPLOY)
        rollback = deployment_rollback(deployment=deployment, user=membership.user)
        return Response(recorded_deployment_data(rollback), status=status.HTTP_201_CREATED)


class DeploymentPromoteView(APIView):
    @extend_schema(
        request=None,
        responses={202: DeploymentSerializer},
        operation_id="deployments_promote",
        tags=TAGS,
        description="Let a canary deployment waiting for a person (promotion: manual) go on "
        "to its other servers. 409 unless it is running with servers waiting.",
    )
    def post(self, request: Request, deployment_id: int) -> Response:
        deployment, membership = get_deployment_for_user(request, deployment_id, need=Need.DEPLOY)
        deployment_request_promotion(deployment=deployment, user=membership.user)
        return Response(recorded_deployment_data(deployment), status=status.HTTP_202_ACCEPTED)


class DeploymentAbortView(APIView):
    @extend_schema(
        request=None,
        responses={202: DeploymentSerializer},
        operation_id="deployments_abort",
        tags=TAGS,
        description="Stop a running deployment and roll back every server it switched "
        "(the canaries of a waiting canary deployment). 409 unless it is running.",
    )
    def post(self, request: Request, deployment_id: int) -> Response:
        deployment, membership = get_deployment_for_user(request, deployment_id, need=Need.DEPLOY)
        deployment_request_abort(deployment=deployment, user=membership.user)
        return Response(recorded_deployment_data(deployment), status=status.HTTP_202_ACCEPTED)
