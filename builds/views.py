"""Dashboard pages for deployments: start one (after a preview), follow it live, cancel it,
deploy it again or roll it back."""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.crypto import constant_time_compare
from django.views.decorators.cache import never_cache
from django.views.decorators.http import (
    require_GET,
    require_http_methods,
    require_POST,
    require_safe,
)

from builds import badges, gates, pending
from builds.dora import DEFAULT_DAYS, WINDOWS, project_dora, project_environments
from builds.forms import DeploymentForm
from builds.models import Deployment, Kind, Status, TargetStatus, Trigger
from builds.presenters import dora_chart_data
from builds.serializers import DoraQuerySerializer
from builds.services import (
    artefact_promote,
    deployment_approve,
    deployment_cancel,
    deployment_gates_override,
    deployment_request_abort,
    deployment_request_promotion,
    deployment_retry,
    deployment_rollback,
    deployment_start_with_strategy,
    gates_preview,
    group_switch_back,
    promotion_servers,
    retry_statuses,
    retry_superseded,
    rollback_plan_deployment,
    stack_lock,
    stack_unlock,
)
from deployer.models import OutboxMessage
from projects.dashboard import (
    SERVICE_ERRORS,
    ProjectMirror,
    add_service_error,
    error_message,
    get_deployment_for_user,
    get_project_for_user,
    get_server_for_user,
    get_setting_for_user,
    get_site_admin,
    lock_reason_from,
    page_context,
)
from projects.models import (
    CONFIGURE_ROLES,
    DEPLOY_ROLES,
    Membership,
    Project,
    server_badge_signature,
)
from servers.models import Promotion, Server, ServerGroup, Strategy

# --------------------------------------------------------------------------- a new deployment


def _initial_from_query(
    request: HttpRequest, servers: list[Server], *, has_groups: bool
) -> dict[str, Any]:
    initial: dict[str, Any] = {
        "servers": [value for value in request.GET.getlist("servers") if value.isdigit()],
        "group": request.GET.get("group", ""),
        "revision": request.GET.get("revision", ""),
        "ref": request.GET.get("ref", ""),
    }
    for option in ("full", "skip_build", "skip_cache"):
        initial[option] = request.GET.get(option) == "on"
    initial["strategy"] = request.GET.get("strategy", "")
    if not initial["servers"] and not initial["group"] and len(servers) == 1 and not has_groups:
        initial["servers"] = [str(servers[0].pk)]
    return initial


@login_required
@require_http_methods(["GET", "POST"])
def deployment_new(request: HttpRequest, slug: str) -> HttpResponse:
    membership = get_project_for_user(request, slug, role=DEPLOY_ROLES)
    project = membership.project
    mirror = ProjectMirror(project)
    commits = mirror.recent(project.branch)
    servers = list(project.servers.all())
    preview: Deployment | None = None
    if request.method == "POST":
        form = DeploymentForm(request.POST, project=project, commits=commits, membership=membership)
        wants_preview = request.POST.get("action") == "preview"
        if form.is_valid():
            revision = form.chosen_revision()
            try:
                deployment = deployment_start_with_strategy(
                    project=project,
                    user=membership.user,
                    servers=list(form.cleaned_data["servers"]),
                    group=form.cleaned_data["group"],
                    revision=revision,
                    full=form.cleaned_data["full"],
                    skip_build=form.cleaned_data["skip_build"],
                    skip_cache=form.cleaned_data["skip_cache"],
                    preview=wants_preview,
                    trigger=Trigger.MANUAL,
                    strategy=form.cleaned_data["strategy"],
                    freeze_override_reason=form.cleaned_data["freeze_override_reason"],
                    gates_override_reason=form.cleaned_data["gates_override_reason"],
                )
            except SERVICE_ERRORS as exc:
                typed = "ref" if form.cleaned_data.get("ref") else "revision"
                add_service_error(form, exc, aliases={"revision": typed})
            else:
                if not wants_preview:
                    return redirect("deployment-detail", slug, deployment.pk)
                query = [
                    (key, value)
                    for key in request.POST
                    if key not in ("csrfmiddlewaretoken", "action")
                    for value in request.POST.getlist(key)
                ]
                query.append(("preview", str(deployment.pk)))
                return redirect(reverse("deployment-new", args=[slug]) + "?" + urlencode(query))
    else:
        form = DeploymentForm(
            initial=_initial_from_query(request, servers, has_groups=project.groups.exists()),
            project=project,
            commits=commits,
            membership=membership,
        )
        preview_id = request.GET.get("preview", "")
        if preview_id.isdigit():
            preview = (
                project.deployments.filter(pk=int(preview_id), kind=Kind.PREVIEW)
                .prefetch_related("targets__server")
                .first()
            )
    return render(
        request,
        "builds/new.html",
        page_context(
            membership,
            tab="deploy",
            form=form,
            commits=commits,
            mirror_exists=mirror.exists,
            head=mirror.head(project.branch),
            servers=servers,
            preview=preview,
            gate_policies=list(project.gate_policies.all()),
            checklist=_checklist_for(request, membership, form),
        ),
    )


@login_required
@require_GET
def deployment_preview(request: HttpRequest, slug: str, deployment_id: int) -> HttpResponse:
    """The preview's result, polled by the new deployment page until it is done."""
    deployment, membership = get_deployment_for_user(request, slug, deployment_id)
    return render(
        request,
        "builds/_preview.html",
        page_context(membership, preview=_with_targets(deployment)),
    )


def _with_targets(deployment: Deployment) -> Deployment:
    fresh = (
        Deployment.objects.select_related("triggered_by", "group", "rollback_of", "artefact")
        .prefetch_related("targets__server")
        .get(pk=deployment.pk)
    )
    fresh.project = deployment.project
    return fresh


# --------------------------------------------------------------------------- a deployment


def _checklist_for(
    request: HttpRequest, membership: Membership, form: DeploymentForm
) -> gates.Checklist | None:
    """The gates of the servers (or group) and revision the form holds, for the deploy page:
    None when the project has no gate policy or nothing is chosen yet."""
    project = membership.project
    if not project.gate_policies.exists():
        return None
    data = form.data if form.is_bound else form.initial
    getter = data.getlist if hasattr(data, "getlist") else None
    server_ids = getter("servers") if getter is not None else data.get("servers") or []
    server_ids = [int(pk) for pk in server_ids if str(pk).isdigit()]
    group_id = str(data.get("group") or "")
    group = project.groups.filter(pk=int(group_id)).first() if group_id.isdigit() else None
    servers = list(project.servers.filter(pk__in=server_ids))
    if not servers and group is None:
        return None
    revision = str(data.get("ref") or data.get("revision") or "")
    return gates_preview(
        project=project, user=membership.user, servers=servers, group=group, revision=revision
    )


def _deployment_context(deployment: Deployment, membership: Membership) -> dict[str, Any]:
    deployment = _with_targets(deployment)
    targets = list(deployment.targets.all())
    succeeded = any(target.status == TargetStatus.SUCCEEDED for target in targets)
    waiting = [target for target in targets if target.status == TargetStatus.WAITING]
    can_deploy = membership.can_deploy
    running = deployment.status == Status.RUNNING
    can_roll_back = (
        can_deploy
        and not deployment.is_active
        and deployment.kind in (Kind.DEPLOY, Kind.PROMOTE)
        and succeeded
    )
    # "Retry failed servers": the servers of a finished deployment that did not take it.
    to_retry = [target for target in targets if target.status in retry_statuses(deployment)]
    can_retry = (
        can_deploy
        and not deployment.is_active
        and deployment.kind == Kind.DEPLOY
        and bool(to_retry)
        and not retry_superseded(deployment, [target.server for target in to_retry])
    )
    # Build once, promote (docs/promote.md): its kept build output, to any environment.
    artefact = deployment.artefact
    can_promote_artefact = (
        can_deploy
        and deployment.kind in (Kind.DEPLOY, Kind.PROMOTE)
        and deployment.status == Status.SUCCEEDED
        and artefact is not None
        and artefact.removed_at is None
    )
    return page_context(
        membership,
        tab="deployments",
        deployment=deployment,
        targets=targets,
        can_promote_artefact=can_promote_artefact,
        promotion_choices=_promotion_choices(deployment) if can_promote_artefact else {},
        waiting=waiting,
        strategy=_strategy(deployment),
        steps=list(deployment.steps.select_related("server")),
        can_promote=(
            can_deploy
            and running
            and bool(waiting)
            and not deployment.promote_requested_at
            and not deployment.abort_requested_at
        ),
        can_abort=(
            can_deploy
            and running
            and deployment.kind == Kind.DEPLOY
            and not deployment.abort_requested_at
        ),
        can_cancel=can_deploy and deployment.is_active,
        can_redeploy=can_deploy and not deployment.is_active and deployment.kind == Kind.DEPLOY,
        can_roll_back=can_roll_back,
        can_retry=can_retry,
        rollbacks=list(deployment.rollbacks.order_by("pk").only("pk")),
        retry_servers=[target.server for target in to_retry] if can_retry else [],
        retry_keeps=[
            target.server for target in targets if target.status == TargetStatus.SUCCEEDED
        ],
        # Where each server goes, said in the confirmation before anything happens.
        rollback_plans=rollback_plan_deployment(deployment) if can_roll_back else [],
        changes=_changes(deployment.changes),
        checklist=gates.checklist_of(deployment),
        can_approve=(
            deployment.status == Status.GATED
            and can_deploy
            and deployment.triggered_by_id != membership.user_id
        ),
        can_override_gates=deployment.status == Status.GATED and membership.can_configure,
        approved_by=[approval.user.get_username() for approval in deployment.approvals.all()],
    )


def _promotion_choices(deployment: Deployment) -> dict[str, list[str]]:
    """What the Promote form offers: the project's environments (of enabled servers) and
    its enabled servers' names."""
    servers = Server.objects.filter(project_id=deployment.project_id, enabled=True).order_by("name")
    return {
        "environments": sorted({s.environment for s in servers if s.environment}),
        "servers": [s.name for s in servers],
    }


def _strategy(deployment: Deployment) -> dict[str, Any] | None:
    """How this deployment's servers take the release (the runner's choice, in words); a
    rollback of a group's deployment goes the same way."""
    if deployment.kind in (Kind.PREVIEW, Kind.SWITCH):
        return None
    group = deployment.group
    kind = deployment.strategy or (group.strategy if group is not None else Strategy.PARALLEL)
    label = Strategy(kind).label if kind in Strategy.values else kind
    details = []
    if group is not None and kind == Strategy.CANARY:
        details.append(f"{group.canary_count} first")
        if group.canary_window_seconds:
            details.append(f"watched {group.canary_window_seconds} s")
        details.append(
            "promoted by hand" if group.promotion == Promotion.MANUAL else "the rest automatically"
        )
    elif group is not None and kind == Strategy.ROLLING:
        details.append(f"batches of {group.batch_size}")
        if group.pause_seconds:
            details.append(f"{group.pause_seconds} s apart")
    elif group is not None and kind == Strategy.BLUE_GREEN and group.router is not None:
        details.append(f"router {group.router.name}")
    return {"kind": kind, "label": label, "details": details, "override": bool(deployment.strategy)}


def _changes(changes: Any) -> dict[str, Any] | None:
    if not isinstance(changes, dict) or not any(
        changes.get(k) for k in ("added", "modified", "deleted", "bytes")
    ):
        return None
    return {
        "added": list(changes.get("added") or []),
        "modified": list(changes.get("modified") or []),
        "deleted": list(changes.get("deleted") or []),
        "bytes": int(changes.get("bytes") or 0),
    }


@login_required
@require_GET
def deployment_detail(request: HttpRequest, slug: str, deployment_id: int) -> HttpResponse:
    deployment, membership = get_deployment_for_user(request, slug, deployment_id)
    context = _deployment_context(deployment, membership)
    servers = {target.server_id: target.server.name for target in context["targets"]}
    context["log_config"] = {
        "socket": f"/ws/deployments/{deployment.pk}/",
        "summary": reverse("deployment-summary", args=[slug, deployment.pk]),
        "servers": {str(pk): name for pk, name in servers.items()},
        "active": deployment.is_active,
    }
    # Lines were written (log_seq counts them) but retention has removed them since.
    context["log_removed"] = (
        not deployment.is_active and deployment.log_seq > 0 and not deployment.log_lines.exists()
    )
    return render(request, "builds/detail.html", context)


@login_required
@require_GET
def deployment_summary(request: HttpRequest, slug: str, deployment_id: int) -> HttpResponse:
    """Everything on the deployment page but the log: redrawn when its status changes."""
    deployment, membership = get_deployment_for_user(request, slug, deployment_id)
    return render(request, "builds/_summary.html", _deployment_context(deployment, membership))


@login_required
@require_POST
def deployment_cancel_view(request: HttpRequest, slug: str, deployment_id: int) -> HttpResponse:
    deployment, membership = get_deployment_for_user(
        request, slug, deployment_id, role=DEPLOY_ROLES
    )
    try:
        deployment_cancel(deployment=deployment, user=membership.user)
    except SERVICE_ERRORS as exc:
        messages.error(request, error_message(exc))
    else:
        messages.info(
            request,
            "Cancelling: the deployment stops at its next safe point; every server keeps "
            "the release it had."
            if deployment.is_active
            else "Cancelled before it started.",
        )
    return redirect("deployment-detail", slug, deployment_id)


@login_required
@require_POST
def deployment_approve_view(request: HttpRequest, slug: str, deployment_id: int) -> HttpResponse:
    deployment, membership = get_deployment_for_user(
        request, slug, deployment_id, role=DEPLOY_ROLES
    )
    try:
        approved = deployment_approve(deployment=deployment, user=membership.user)
    except SERVICE_ERRORS as exc:
        messages.error(request, error_message(exc))
    else:
        messages.info(
            request,
            "Approved: the gates passed, it runs now."
            if approved.status != Status.GATED
            else "Approved: it still waits for its other gates.",
        )
    return redirect("deployment-detail", slug, deployment_id)


@login_required
@require_POST
def deployment_gates_override_view(
    request: HttpRequest, slug: str, deployment_id: int
) -> HttpResponse:
    deployment, membership = get_deployment_for_user(
        request, slug, deployment_id, role=CONFIGURE_ROLES
    )
    try:
        deployment_gates_override(
            deployment=deployment,
            user=membership.user,
            reason=request.POST.get("reason", ""),
        )
    except SERVICE_ERRORS as exc:
        messages.error(request, error_message(exc))
    else:
        messages.info(request, "Gates overridden: it runs now. The audit log keeps your reason.")
    return redirect("deployment-detail", slug, deployment_id)


@login_required
@require_POST
def deployment_redeploy(request: HttpRequest, slug: str, deployment_id: int) -> HttpResponse:
    deployment, membership = get_deployment_for_user(
        request, slug, deployment_id, role=DEPLOY_ROLES
    )
    group = deployment.group
    servers = [] if group else [t.server for t in deployment.targets.select_related("server")]
    try:
        again = deployment_start_with_strategy(
            project=membership.project,
            user=membership.user,
            servers=servers,
            group=group,
            revision=deployment.end_revision or deployment.revision,
            full=deployment.full,
            skip_build=deployment.skip_build,
            skip_cache=deployment.skip_cache,
            trigger=Trigger.MANUAL,
            strategy=deployment.strategy,
        )
    except SERVICE_ERRORS as exc:
        messages.error(request, error_message(exc))
        return redirect("deployment-detail", slug, deployment_id)
    return redirect("deployment-detail", slug, again.pk)


@login_required
@require_POST
def deployment_retry_view(request: HttpRequest, slug: str, deployment_id: int) -> HttpResponse:
    """Retry failed servers: the same revision again, to the servers that did not take it."""
    deployment, membership = get_deployment_for_user(
        request, slug, deployment_id, role=DEPLOY_ROLES
    )
    try:
        retry = deployment_retry(
            deployment=deployment,
            user=membership.user,
            trigger=Trigger.MANUAL,
            freeze_override_reason=request.POST.get("freeze_override_reason", ""),
        )
    except SERVICE_ERRORS as exc:
        messages.error(request, error_message(exc))
        return redirect("deployment-detail", slug, deployment_id)
    return redirect("deployment-detail", slug, retry.pk)


@login_required
@require_POST
def deployment_promote_artefact_view(
    request: HttpRequest, slug: str, deployment_id: int
) -> HttpResponse:
    """Build once, promote: this deployment's kept build output to the environment or
    server the form names, with no fetch and no build (docs/promote.md)."""
    deployment, membership = get_deployment_for_user(
        request, slug, deployment_id, role=DEPLOY_ROLES
    )
    try:
        promotion = artefact_promote(
            source=deployment,
            servers=promotion_servers(project=deployment.project, to=request.POST.get("to", "")),
            user=membership.user,
            trigger=Trigger.MANUAL,
            freeze_override_reason=request.POST.get("freeze_override_reason", ""),
        )
    except SERVICE_ERRORS as exc:
        messages.error(request, error_message(exc))
        return redirect("deployment-detail", slug, deployment_id)
    return redirect("deployment-detail", slug, promotion.pk)


@login_required
@require_POST
def deployment_roll_back(request: HttpRequest, slug: str, deployment_id: int) -> HttpResponse:
    deployment, membership = get_deployment_for_user(
        request, slug, deployment_id, role=DEPLOY_ROLES
    )
    try:
        rollback = deployment_rollback(
            deployment=deployment,
            user=membership.user,
            trigger=Trigger.MANUAL,
            lock_reason=lock_reason_from(request, f"Rolled back deployment #{deployment.pk}"),
        )
    except SERVICE_ERRORS as exc:
        messages.error(request, error_message(exc))
        return redirect("deployment-detail", slug, deployment_id)
    return redirect("deployment-detail", slug, rollback.pk)


@login_required
@require_POST
def deployment_promote_view(request: HttpRequest, slug: str, deployment_id: int) -> HttpResponse:
    deployment, membership = get_deployment_for_user(
        request, slug, deployment_id, role=DEPLOY_ROLES
    )
    try:
        deployment_request_promotion(deployment=deployment, user=membership.user)
    except SERVICE_ERRORS as exc:
        messages.error(request, error_message(exc))
    else:
        messages.success(request, "Promoted: the other servers get the release now.")
    return redirect("deployment-detail", slug, deployment_id)


@login_required
@require_POST
def group_switch_back_view(request: HttpRequest, slug: str, group_id: int) -> HttpResponse:
    """Blue-green: the router sends the group's traffic back to the other colour."""
    group, membership = get_setting_for_user(
        request, slug, ServerGroup, group_id, role=DEPLOY_ROLES
    )
    try:
        deployment = group_switch_back(group=group, user=membership.user, trigger=Trigger.MANUAL)
    except SERVICE_ERRORS as exc:
        messages.error(request, error_message(exc))
        return redirect("project-detail", slug)
    messages.info(
        request,
        f"Switching {group.name} back to {group.idle_colour}: the router alone changes, "
        "no server is deployed to.",
    )
    return redirect("deployment-detail", slug, deployment.pk)


@login_required
@require_POST
def deployment_abort_view(request: HttpRequest, slug: str, deployment_id: int) -> HttpResponse:
    deployment, membership = get_deployment_for_user(
        request, slug, deployment_id, role=DEPLOY_ROLES
    )
    try:
        deployment_request_abort(deployment=deployment, user=membership.user)
    except SERVICE_ERRORS as exc:
        messages.error(request, error_message(exc))
    else:
        messages.info(
            request,
            "Aborting: the deployment stops at its next safe point, then a rollback takes "
            "every server it switched back to the release it had.",
        )
    return redirect("deployment-detail", slug, deployment_id)


# --------------------------------------------------------------------------- pending work


@never_cache
@login_required
@require_GET
def pending_work(request: HttpRequest) -> HttpResponse:
    """Site admins: every queued and running deployment of every project, with its start
    message and why it waits (builds.pending). ``?format=json`` answers the same as JSON."""
    get_site_admin(request)
    rows = pending.pending_deployments()
    webhooks = pending.pending_webhooks()
    if request.GET.get("format") == "json":
        return JsonResponse(
            {
                "deployments": [_pending_json(row) for row in rows],
                "webhook_deliveries": [_pending_webhooks_json(row) for row in webhooks],
            }
        )
    return render(request, "builds/pending.html", {"rows": rows, "webhooks": webhooks})


def _message_json(message: OutboxMessage | None, state: str) -> dict[str, Any]:
    return {
        "state": state,
        "sent_at": message.sent_at.isoformat() if message and message.sent_at else None,
        "consumed_at": (
            message.consumed_at.isoformat() if message and message.consumed_at else None
        ),
        "consumed_by": message.consumed_by if message else "",
        "attempts": message.attempts if message else 0,
        "last_error": message.last_error if message else "",
    }


def _pending_webhooks_json(row: pending.PendingWebhooks) -> dict[str, Any]:
    return {
        "project": row.project.slug,
        "waiting": row.waiting,
        "oldest_received_at": row.oldest.isoformat(),
        "queue": row.queue,
        "message": _message_json(row.message, row.message_state),
        "why": row.why,
    }


def _pending_json(row: pending.PendingDeployment) -> dict[str, Any]:
    deployment, message = row.deployment, row.message
    return {
        "id": deployment.pk,
        "project": deployment.project.slug,
        "kind": deployment.kind,
        "status": deployment.status,
        "created_at": deployment.created_at.isoformat(),
        "servers": [target.server.name for target in deployment.targets.all()],
        "queue": row.queue,
        "message": _message_json(message, row.message_state),
        "worker": deployment.worker,
        "heartbeat_at": deployment.heartbeat_at.isoformat() if deployment.heartbeat_at else None,
        "heartbeat_stale": row.stale,
        "why": row.why,
    }


# --------------------------------------------------------------------------- stack locks


@login_required
@require_POST
def project_lock_view(request: HttpRequest, slug: str) -> HttpResponse:
    membership = get_project_for_user(request, slug, role=DEPLOY_ROLES)
    try:
        stack_lock(
            project=membership.project,
            user=membership.user,
            reason=request.POST.get("reason", ""),
        )
    except SERVICE_ERRORS as exc:
        messages.error(request, error_message(exc))
    else:
        messages.success(request, "Locked: only rollbacks run until someone unlocks it.")
    return redirect(_back(request, reverse("project-detail", args=[slug])))


@login_required
@require_POST
def project_unlock_view(request: HttpRequest, slug: str) -> HttpResponse:
    membership = get_project_for_user(request, slug, role=DEPLOY_ROLES)
    try:
        stack_unlock(project=membership.project, user=membership.user)
    except SERVICE_ERRORS as exc:
        messages.error(request, error_message(exc))
    else:
        messages.success(request, "Unlocked.")
    return redirect(_back(request, reverse("project-detail", args=[slug])))


@login_required
@require_POST
def server_lock_view(request: HttpRequest, slug: str, server_id: int) -> HttpResponse:
    server, membership = get_server_for_user(request, slug, server_id, role=DEPLOY_ROLES)
    try:
        if request.POST.get("action") == "unlock":
            stack_unlock(project=membership.project, server=server, user=membership.user)
            messages.success(request, f"Unlocked {server.name}.")
        else:
            stack_lock(
                project=membership.project,
                server=server,
                user=membership.user,
                reason=request.POST.get("reason", ""),
            )
            messages.success(request, f"Locked {server.name}: only rollbacks reach it.")
    except SERVICE_ERRORS as exc:
        messages.error(request, error_message(exc))
    return redirect("server-detail", slug, server_id)


def _back(request: HttpRequest, default: str) -> str:
    # Back to the page the form was on, when it is one of ours.
    target = request.POST.get("next", "")
    if target.startswith("/") and not target.startswith("//"):
        return target
    return default


# --------------------------------------------------------------------------- status badges


def _badge_response(request: HttpRequest, svg: str) -> HttpResponse:
    """An SVG badge, never cached without asking again (GitHub's image proxy honours
    ``Cache-Control: no-cache``), with an ETag so that asking again costs one 304."""
    tag = '"' + hashlib.sha256(svg.encode()).hexdigest()[:32] + '"'
    if tag in request.headers.get("If-None-Match", ""):
        response = HttpResponse(status=304)
    else:
        response = HttpResponse(svg, content_type="image/svg+xml; charset=utf-8")
    response["ETag"] = tag
    response["Cache-Control"] = "no-cache, max-age=0"
    # The SVG is a document of its own if opened directly: nothing in it may run.
    response["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
    return response


@require_safe
def project_badge_view(request: HttpRequest, token: str) -> HttpResponse:
    """GET /badges/<token>.svg: the project's status badge; 404 for an unknown token. No
    sign-in: the token is the credential (docs/badges.md)."""
    project = Project.objects.filter(badge_token=token).first()
    if project is None:
        raise Http404("No badge has this address: it may have been rotated.")
    return _badge_response(request, badges.project_badge(project).svg())


@require_safe
def server_badge_view(request: HttpRequest, server_id: int, signature: str) -> HttpResponse:
    """GET /badges/servers/<id>-<signature>.svg: a server's badge, when the signature is the
    one its project's badge token gives (compared in constant time); 404 otherwise."""
    server = (
        Server.objects.select_related("project").filter(pk=server_id).first()
        if 0 < server_id < 2**63
        else None
    )
    expected = server_badge_signature(server.project.badge_token, server.pk) if server else ""
    if server is None or not constant_time_compare(signature, expected):
        raise Http404("No badge has this address: it may have been rotated.")
    return _badge_response(request, badges.server_badge(server).svg())


@login_required
@require_GET
def project_metrics(request: HttpRequest, slug: str) -> HttpResponse:
    """DORA's four keys with their charts (docs/metrics.md); ?environment= and ?days= as the
    API takes them. A bad value is named above the figures of the default window (400)."""
    membership = get_project_for_user(request, slug)
    query = DoraQuerySerializer(data=request.GET)
    valid = query.is_valid()
    environment: str = query.validated_data["environment"] if valid else ""
    days: int = query.validated_data["days"] if valid else DEFAULT_DAYS
    report = project_dora(membership.project, environment=environment, days=days)
    return render(
        request,
        "builds/metrics.html",
        page_context(
            membership,
            tab="metrics",
            report=report,
            chart=dora_chart_data(report),
            environments=project_environments(membership.project),
            windows=WINDOWS,
            failed_rows=[row for row in report.rows if row.change_failed],
            query=urlencode(
                {"environment": environment, "days": days} if environment else {"days": days}
            ),
            errors={} if valid else query.errors,
        ),
        status=200 if valid else 400,
    )
