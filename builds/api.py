"""API views for deployments: start, read, follow the log, cancel, roll back."""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from builds.dora import days_csv, deployments_csv, project_dora, project_environments
from builds.models import Deployment, GatePolicy, Schedule, ScheduleRun, Trigger
from builds.schedules import schedule_create, schedule_delete, schedule_update
from builds.serializers import (
    DeploymentCreateSerializer,
    DeploymentPageSerializer,
    DeploymentSerializer,
    DeploymentSummarySerializer,
    DoraQuerySerializer,
    DoraReportSerializer,
    GatePolicySerializer,
    GatesCheckAnswerSerializer,
    GatesOverrideSerializer,
    LockAnswerSerializer,
    LockRequestSerializer,
    LogQuerySerializer,
    LogSerializer,
    PromotionRequestSerializer,
    RetryOptionsSerializer,
    RollbackOptionsSerializer,
    ScheduleRunPageSerializer,
    ScheduleRunSerializer,
    ScheduleSerializer,
)
from builds.services import (
    artefact_promote,
    deployment_approve,
    deployment_cancel,
    deployment_gates_override,
    deployment_log_page,
    deployment_request_abort,
    deployment_request_promotion,
    deployment_retry,
    deployment_rollback,
    deployment_start_with_strategy,
    gate_policy_create,
    gate_policy_delete,
    gate_policy_update,
    gates_preview,
    promotion_servers,
    stack_lock,
    stack_unlock,
)
from deployer.api import (
    Need,
    Pagination,
    get_deployment_for_user,
    get_project_for_user,
    get_server_for_user,
    get_setting_for_user,
)
from deployer.db import UNAVAILABLE_ERRORS, retrying
from projects.api import SettingDetailView, SettingListView
from projects.serializers import lock_data

TAGS = ["deployments"]


def _with_related(deployments: Any) -> Any:
    return deployments.select_related(
        "project", "triggered_by", "group", "artefact"
    ).prefetch_related("targets__server", "approvals__user")


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
            freeze_override_reason=data.get("freeze_override_reason", ""),
            gates_override_reason=data.get("gates_override_reason", ""),
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
        request=RollbackOptionsSerializer,
        responses={201: DeploymentSerializer},
        operation_id="deployments_rollback",
        tags=TAGS,
        description="Undo this deployment on each server where it succeeded (a stack lock "
        "or a freeze window does not stop a rollback); with lock_reason, lock the project too.",
    )
    def post(self, request: Request, deployment_id: int) -> Response:
        deployment, membership = get_deployment_for_user(request, deployment_id, need=Need.DEPLOY)
        options = RollbackOptionsSerializer(data=request.data)
        options.is_valid(raise_exception=True)
        rollback = deployment_rollback(
            deployment=deployment,
            user=membership.user,
            lock_reason=options.validated_data.get("lock_reason", ""),
        )
        return Response(recorded_deployment_data(rollback), status=status.HTTP_201_CREATED)


class DeploymentRetryView(APIView):
    @extend_schema(
        request=RetryOptionsSerializer,
        responses={201: DeploymentSerializer},
        operation_id="deployments_retry",
        tags=TAGS,
        description="Retry failed servers: a new deployment of the same revision (its SHA), "
        "branch, options, group and strategy, to the servers of this finished deployment that "
        "did not take it (failed, rolled back, cancelled or never reached); the others are "
        "left alone; a blue-green deployment's live colour is never retried. A manual "
        "deployment: a stack lock or a freeze window refuses it (409; an admin may give "
        "freeze_override_reason), and so do the caller's deploy rights (403). 409 while it is "
        "queued or running, when it succeeded everywhere, or when retrying would undo later "
        "work (it was aborted or rolled back, or a later deployment reached one of those "
        "servers); 400 naming servers when one to retry is disabled or none is left.",
    )
    def post(self, request: Request, deployment_id: int) -> Response:
        deployment, membership = get_deployment_for_user(request, deployment_id, need=Need.DEPLOY)
        options = RetryOptionsSerializer(data=request.data)
        options.is_valid(raise_exception=True)
        retry = deployment_retry(
            deployment=deployment,
            user=membership.user,
            freeze_override_reason=options.validated_data.get("freeze_override_reason", ""),
        )
        return Response(recorded_deployment_data(retry), status=status.HTTP_201_CREATED)


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


class DeploymentPromotionView(APIView):
    @extend_schema(
        request=PromotionRequestSerializer,
        responses={201: DeploymentSerializer},
        operation_id="deployments_promote_artefact",
        tags=TAGS,
        description="Build once, promote (docs/promote.md): a new deployment (kind promote, "
        "promoted_from: this one) that sends the build output this deployment kept to the "
        "servers `to` names (an environment, or server names separated by commas), with no "
        "fetch and no build: every file is checked against the kept manifest first. Not the "
        "canary's promote. 409 unless this deployment is a deploy or promotion that "
        "succeeded; 400 naming deployment when its output was not kept or retention removed "
        "it, naming to when it names no server; the caller's deploy rights (403), a stack "
        "lock or a freeze window (409; an admin may give freeze_override_reason) refuse it "
        "as any deployment.",
    )
    def post(self, request: Request, deployment_id: int) -> Response:
        deployment, membership = get_deployment_for_user(request, deployment_id, need=Need.DEPLOY)
        options = PromotionRequestSerializer(data=request.data)
        options.is_valid(raise_exception=True)
        promotion = artefact_promote(
            source=deployment,
            servers=promotion_servers(project=deployment.project, to=options.validated_data["to"]),
            user=membership.user,
            trigger=Trigger.API,
            freeze_override_reason=options.validated_data.get("freeze_override_reason", ""),
            gates_override_reason=options.validated_data.get("gates_override_reason", ""),
        )
        return Response(recorded_deployment_data(promotion), status=status.HTTP_201_CREATED)


class DeploymentAbortView(APIView):
    @extend_schema(
        request=None,
        responses={202: DeploymentSerializer},
        operation_id="deployments_abort",
        tags=TAGS,
        description="Abort and roll back: stop a running deployment at its next safe point "
        "(servers not switched yet keep the release they had), then roll back every server "
        "it had switched to the release live there before it. The rollback is a deployment "
        "of kind rollback (rollback_of: this one), queued when this one ends. 409 unless it "
        "is a running deployment (cancel a queued one or a rollback).",
    )
    def post(self, request: Request, deployment_id: int) -> Response:
        deployment, membership = get_deployment_for_user(request, deployment_id, need=Need.DEPLOY)
        deployment_request_abort(deployment=deployment, user=membership.user)
        return Response(recorded_deployment_data(deployment), status=status.HTTP_202_ACCEPTED)


# --------------------------------------------------------------------------- gates


class DeploymentApproveView(APIView):
    @extend_schema(
        request=None,
        responses={200: DeploymentSerializer},
        operation_id="deployments_approve",
        tags=TAGS,
        description="Approve a deployment held by an approvals gate (docs/gates.md); it runs "
        "once every gate passed. 403 for the member who asked for it (no self-approval) or a "
        "role the gate does not accept (viewers never); 409 when it is not held or needs no "
        "approval. Approving twice changes nothing.",
    )
    def post(self, request: Request, deployment_id: int) -> Response:
        deployment, membership = get_deployment_for_user(request, deployment_id, need=Need.DEPLOY)
        deployment_approve(deployment=deployment, user=membership.user)
        return Response(recorded_deployment_data(deployment))


class DeploymentGatesOverrideView(APIView):
    @extend_schema(
        request=GatesOverrideSerializer,
        responses={202: DeploymentSerializer},
        operation_id="deployments_gates_override",
        tags=TAGS,
        description="Let a deployment held by its gates run now (project admins; the reason "
        "goes to the audit log). 409 when it is not held.",
    )
    def post(self, request: Request, deployment_id: int) -> Response:
        deployment, membership = get_deployment_for_user(
            request, deployment_id, need=Need.CONFIGURE
        )
        options = GatesOverrideSerializer(data=request.data)
        options.is_valid(raise_exception=True)
        deployment_gates_override(
            deployment=deployment, user=membership.user, reason=options.validated_data["reason"]
        )
        return Response(recorded_deployment_data(deployment), status=status.HTTP_202_ACCEPTED)


class ProjectGatesCheckView(APIView):
    @extend_schema(
        request=DeploymentCreateSerializer,
        responses={200: GatesCheckAnswerSerializer},
        operation_id="projects_gates_check",
        tags=["gates"],
        description="The checklist a deployment of these servers (or group) and revision "
        "would meet now, without creating it: each gate's state and what creating it would "
        "do (deploy, wait, refuse). Reads the revision's commit and, for a CI gate with no "
        "status stored yet, the Git host's API.",
    )
    def post(self, request: Request, slug: str) -> Response:
        membership = get_project_for_user(request, slug, need=Need.DEPLOY)
        serializer = DeploymentCreateSerializer(
            data=request.data, context={"project": membership.project}
        )
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        checklist = gates_preview(
            project=membership.project,
            user=membership.user,
            servers=data.get("servers", []),
            group=data.get("group"),
            revision=data.get("revision", ""),
        )
        outcome = "deploy" if checklist.passed else "refuse" if checklist.failed else "wait"
        return Response(
            GatesCheckAnswerSerializer({**checklist.as_dict(), "outcome": outcome}).data
        )


@extend_schema(tags=["gates"])
class GatePolicyListView(SettingListView):
    """A project's gate policies, one per environment: members read them, admins change them."""

    model = GatePolicy
    serializer_class = GatePolicySerializer

    def perform_create(self, serializer: Any) -> None:
        serializer.instance = gate_policy_create(
            project=self.membership.project,
            actor=self.membership.user,
            **serializer.validated_data,
        )


@extend_schema(tags=["gates"])
class GatePolicyDetailView(SettingDetailView):
    model = GatePolicy
    serializer_class = GatePolicySerializer

    def perform_update(self, serializer: Any) -> None:
        serializer.instance = gate_policy_update(
            policy=serializer.instance, actor=self.membership.user, **serializer.validated_data
        )

    def perform_destroy(self, instance: Any) -> None:
        gate_policy_delete(policy=instance, actor=self.membership.user)


# --------------------------------------------------------------------------- stack locks


def _lock_answer(locked: Any) -> Response:
    return Response({"lock": lock_data(locked)})


class ProjectDeployLockView(APIView):
    @extend_schema(
        request=LockRequestSerializer,
        responses={200: LockAnswerSerializer},
        operation_id="projects_deploy_lock_create",
        tags=["locks"],
        description="Lock the project (shipit's stack lock): every deployment is refused "
        "(409), whatever starts it, except rollbacks. 409 when it is locked already.",
    )
    def post(self, request: Request, slug: str) -> Response:
        membership = get_project_for_user(request, slug, need=Need.DEPLOY)
        serializer = LockRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        stack_lock(
            project=membership.project,
            user=membership.user,
            reason=serializer.validated_data["reason"],
        )
        membership.project.refresh_from_db()
        return _lock_answer(membership.project)

    @extend_schema(
        request=None,
        responses={200: LockAnswerSerializer},
        operation_id="projects_deploy_lock_destroy",
        tags=["locks"],
        description="Unlock the project (recorded in the audit log). 409 when it is not locked.",
    )
    def delete(self, request: Request, slug: str) -> Response:
        membership = get_project_for_user(request, slug, need=Need.DEPLOY)
        stack_unlock(project=membership.project, user=membership.user)
        membership.project.refresh_from_db()
        return _lock_answer(membership.project)


class ServerDeployLockView(APIView):
    @extend_schema(
        request=LockRequestSerializer,
        responses={200: LockAnswerSerializer},
        operation_id="projects_servers_deploy_lock_create",
        tags=["locks"],
        description="Lock one server: deployments that include it are refused (409), "
        "except rollbacks. 409 when it is locked already.",
    )
    def post(self, request: Request, slug: str, server_id: int) -> Response:
        server, membership = get_server_for_user(request, slug, server_id, need=Need.DEPLOY)
        serializer = LockRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        stack_lock(
            project=membership.project,
            server=server,
            user=membership.user,
            reason=serializer.validated_data["reason"],
        )
        server.refresh_from_db()
        return _lock_answer(server)

    @extend_schema(
        request=None,
        responses={200: LockAnswerSerializer},
        operation_id="projects_servers_deploy_lock_destroy",
        tags=["locks"],
        description="Unlock the server (recorded in the audit log). 409 when it is not locked.",
    )
    def delete(self, request: Request, slug: str, server_id: int) -> Response:
        server, membership = get_server_for_user(request, slug, server_id, need=Need.DEPLOY)
        stack_unlock(project=membership.project, server=server, user=membership.user)
        server.refresh_from_db()
        return _lock_answer(server)


# --------------------------------------------------------------------------- schedules


@extend_schema(tags=["schedules"])
class ScheduleListView(SettingListView):
    """A project's scheduled deployments: members read them, admins change them."""

    model = Schedule
    serializer_class = ScheduleSerializer

    def perform_create(self, serializer: Any) -> None:
        serializer.instance = schedule_create(
            project=self.membership.project,
            actor=self.membership.user,
            **serializer.validated_data,
        )


@extend_schema(tags=["schedules"])
class ScheduleDetailView(SettingDetailView):
    model = Schedule
    serializer_class = ScheduleSerializer

    def perform_update(self, serializer: Any) -> None:
        serializer.instance = schedule_update(
            schedule=serializer.instance,
            actor=self.membership.user,
            **serializer.validated_data,
        )

    def perform_destroy(self, instance: Any) -> None:
        schedule_delete(schedule=instance, actor=self.membership.user)


class ScheduleRunListView(APIView):
    @extend_schema(
        responses=ScheduleRunPageSerializer,
        operation_id="projects_schedules_runs_list",
        parameters=[
            OpenApiParameter("page", int, description="Page number, from 1."),
            OpenApiParameter("page_size", int, description="Runs per page (≤ 200)."),
        ],
        tags=["schedules"],
        description="The schedule's slots, newest first: deployed (with the deployment), "
        "skipped (reason_code unchanged, frozen, locked, no_servers) or failed (refused).",
    )
    def get(self, request: Request, slug: str, pk: int) -> Response:
        schedule, _ = get_setting_for_user(request, slug, Schedule, pk)
        paginator = Pagination()
        page: list[ScheduleRun] | None = paginator.paginate_queryset(
            schedule.runs.order_by("-slot", "-id"), request, view=self
        )
        return paginator.get_paginated_response(ScheduleRunSerializer(page, many=True).data)


def _dora_report(request: Request, slug: str) -> tuple[Any, Any]:
    membership = get_project_for_user(request, slug)
    query = DoraQuerySerializer(data=request.query_params)
    query.is_valid(raise_exception=True)
    report = project_dora(
        membership.project,
        environment=query.validated_data["environment"],
        days=query.validated_data["days"],
    )
    return membership, report


class ProjectMetricsView(APIView):
    @extend_schema(
        parameters=[DoraQuerySerializer],
        responses=DoraReportSerializer,
        operation_id="projects_metrics_retrieve",
        tags=["metrics"],
        description="DORA's four keys for the project's servers in one environment (or all) "
        "over the last `days` UTC days: deployment frequency, lead time for changes, change "
        "failure rate, time to restore, and each day's figures. Definitions: docs/metrics.md.",
    )
    def get(self, request: Request, slug: str) -> Response:
        membership, report = _dora_report(request, slug)
        context = {"environments": project_environments(membership.project)}
        return Response(DoraReportSerializer(report, context=context).data)


class ProjectMetricsCsvView(APIView):
    @extend_schema(
        parameters=[
            DoraQuerySerializer,
            OpenApiParameter(
                "rows",
                str,
                OpenApiParameter.PATH,
                enum=["deployments", "days"],
                description="A row per deployment, or per day.",
            ),
        ],
        responses={(200, "text/csv"): OpenApiTypes.STR},
        operation_id="projects_metrics_csv",
        tags=["metrics"],
        description="The same figures as CSV (RFC 4180): `deployments.csv` has one row per "
        "deployment, rollback and switch back with every figure used; `days.csv` one row per "
        "day. Columns: docs/metrics.md#csv-export.",
    )
    def get(self, request: Request, slug: str, rows: str) -> HttpResponse:
        membership, report = _dora_report(request, slug)
        body = deployments_csv(report) if rows == "deployments" else days_csv(report)
        response = HttpResponse(body, content_type="text/csv; charset=utf-8")
        name = f"{membership.project.slug}-{rows}-{report.days}d.csv"
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response
