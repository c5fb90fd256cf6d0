"""Dashboard pages for servers: add and edit one, test its connection and trust its host key,
see the releases it keeps and roll back to one of them, break its deploy lock."""

from __future__ import annotations

from collections.abc import Callable

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from builds.drift_checks import drift_check_create, drift_last, drift_unsupported
from builds.engine.s3 import masked_key_id
from builds.models import TARGET_ACTIVE, Deployment, DeploymentTarget, Kind, Trigger
from builds.services import deployment_rollback_server, rollback_plan_server
from projects.dashboard import (
    SERVICE_ERRORS,
    add_service_error,
    error_message,
    get_project_for_user,
    get_server_for_user,
    lock_reason_from,
    page_context,
    with_servers,
)
from projects.models import CONFIGURE_ROLES, DEPLOY_ROLES, Membership
from servers.forms import RollbackForm, ServerForm, TrustForm
from servers.models import Server
from servers.services import (
    LockBreakRefused,
    ServerCheck,
    server_check,
    server_create,
    server_delete,
    server_lock_break,
    server_trust_host_key,
    server_trust_jump_host_key,
    server_update,
)

RECENT_DEPLOYMENTS = 10


def _render_server(
    request: HttpRequest,
    server: Server,
    membership: Membership,
    *,
    check: ServerCheck | None = None,
    trust_error: str = "",
) -> HttpResponse:
    releases = list(
        server.releases.filter(removed_at__isnull=True).select_related("deployment__triggered_by")
    )
    removed = server.releases.filter(removed_at__isnull=False).count()
    deployments = with_servers(
        Deployment.objects.filter(targets__server=server).exclude(kind=Kind.PREVIEW)[
            :RECENT_DEPLOYMENTS
        ]
    )
    busy = (
        DeploymentTarget.objects.filter(server=server, status__in=TARGET_ACTIVE)
        .select_related("deployment")
        .first()
    )
    return render(
        request,
        "servers/detail.html",
        page_context(
            membership,
            tab="servers",
            server=server,
            releases=releases,
            removed=removed,
            deployments=deployments,
            busy=busy.deployment if busy else None,
            rollback=rollback_plan_server(server),
            check=check,
            trust_error=trust_error,
            s3_key_id=masked_key_id(server.s3_access_key_id) if server.s3_access_key_id else "",
            server_badge_url=membership.project.server_badge_url(server.pk),
            server_badge_path=membership.project.server_badge_path(server.pk),
            # A deployer's deploy rights may leave this server out.
            can_deploy=membership.may_deploy_to(server),
            drift_check=drift_last(server),
            drift_unsupported=drift_unsupported(server),
        ),
    )


@login_required
@require_GET
def server_detail(request: HttpRequest, slug: str, server_id: int) -> HttpResponse:
    server, membership = get_server_for_user(request, slug, server_id)
    return _render_server(request, server, membership)


@login_required
@require_http_methods(["GET", "POST"])
def server_new(request: HttpRequest, slug: str) -> HttpResponse:
    membership = get_project_for_user(request, slug, role=CONFIGURE_ROLES)
    form = ServerForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            server = server_create(
                project=membership.project, actor=membership.user, **form.service_data()
            )
        except SERVICE_ERRORS as exc:
            add_service_error(form, exc, aliases={"fingerprint": "host_key_fingerprint"})
        else:
            messages.success(
                request,
                f"Server {server.name} added. Test the connection"
                + (
                    "."
                    if server.without_ssh
                    else " and trust its host key before the first deployment."
                ),
            )
            return redirect("server-detail", slug, server.pk)
    return render(request, "servers/form.html", page_context(membership, tab="servers", form=form))


@login_required
@require_http_methods(["GET", "POST"])
def server_edit(request: HttpRequest, slug: str, server_id: int) -> HttpResponse:
    server, membership = get_server_for_user(request, slug, server_id, role=CONFIGURE_ROLES)
    form = ServerForm(request.POST or None, server=server)
    if request.method == "POST" and form.is_valid():
        try:
            server_update(server=server, actor=membership.user, **form.service_data())
        except SERVICE_ERRORS as exc:
            add_service_error(form, exc)
        else:
            messages.success(request, f"Server {server.name} saved.")
            return redirect("server-detail", slug, server.pk)
    return render(
        request,
        "servers/form.html",
        page_context(membership, tab="servers", form=form, server=server),
    )


@login_required
@require_POST
def server_remove(request: HttpRequest, slug: str, server_id: int) -> HttpResponse:
    server, membership = get_server_for_user(request, slug, server_id, role=CONFIGURE_ROLES)
    name = server.name
    try:
        server_delete(server=server, actor=membership.user)
    except SERVICE_ERRORS as exc:
        messages.error(request, error_message(exc))
        return redirect("server-detail", slug, server_id)
    messages.success(
        request, f"Server {name} was removed. Its files on the server were left as they are."
    )
    return redirect("project-detail", slug)


@login_required
@require_POST
def server_test(request: HttpRequest, slug: str, server_id: int) -> HttpResponse:
    server, membership = get_server_for_user(request, slug, server_id, role=DEPLOY_ROLES)
    return _render_server(request, server, membership, check=server_check(server=server))


@login_required
@require_POST
def server_drift_check(request: HttpRequest, slug: str, server_id: int) -> HttpResponse:
    """Queue a drift check of the server (builds.drift_checks); its page shows the outcome."""
    server, membership = get_server_for_user(request, slug, server_id, role=DEPLOY_ROLES)
    try:
        check = drift_check_create(server=server, actor=membership.user)
    except SERVICE_ERRORS as exc:
        messages.error(request, error_message(exc))
    else:
        messages.success(
            request,
            f"Drift check #{check.pk} of {server.name} is {check.get_status_display().lower()}; "
            "this section shows what it finds (reload the page).",
        )
    return redirect(reverse("server-detail", args=[slug, server_id]) + "#drift")


@login_required
@require_POST
def server_trust(request: HttpRequest, slug: str, server_id: int) -> HttpResponse:
    def said(server: Server) -> str:
        if server.is_ftp:
            return f"The certificate {server.certificate_fingerprint} of {server.name} is trusted."
        return f"The host key {server.host_key_fingerprint} of {server.name} is trusted."

    return _trust(request, slug, server_id, server_trust_host_key, said)


@login_required
@require_POST
def server_trust_jump(request: HttpRequest, slug: str, server_id: int) -> HttpResponse:
    def said(server: Server) -> str:
        return (
            f"The host key {server.jump_host_key_fingerprint} of the jump host "
            f"{server.jump_address} is trusted."
        )

    return _trust(request, slug, server_id, server_trust_jump_host_key, said)


def _trust(
    request: HttpRequest,
    slug: str,
    server_id: int,
    service: Callable[..., Server],
    said: Callable[[Server], str],
) -> HttpResponse:
    """A trust button: the posted fingerprint checked against what the far side offers now
    by ``service`` (servers.services); the page again, with ``said`` or the refusal."""
    server, membership = get_server_for_user(request, slug, server_id, role=CONFIGURE_ROLES)
    form = TrustForm(request.POST)
    if not form.is_valid():
        return _render_server(request, server, membership, trust_error="No fingerprint was sent.")
    try:
        service(server=server, actor=membership.user, fingerprint=form.cleaned_data["fingerprint"])
    except SERVICE_ERRORS as exc:
        return _render_server(request, server, membership, trust_error=error_message(exc))
    messages.success(request, said(server))
    return _render_server(request, server, membership, check=server_check(server=server))


@login_required
@require_POST
def server_rollback(request: HttpRequest, slug: str, server_id: int) -> HttpResponse:
    server, membership = get_server_for_user(request, slug, server_id, role=DEPLOY_ROLES)
    form = RollbackForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose the release to roll back to.")
        return redirect("server-detail", slug, server_id)
    try:
        deployment = deployment_rollback_server(
            server=server,
            user=membership.user,
            release=form.cleaned_data["release"],
            trigger=Trigger.MANUAL,
            lock_reason=lock_reason_from(
                request, f"Rolled back to {form.cleaned_data['release'] or 'the release before'}"
            ),
        )
    except SERVICE_ERRORS as exc:
        messages.error(request, error_message(exc))
        return redirect("server-detail", slug, server_id)
    return redirect("deployment-detail", slug, deployment.pk)


@login_required
@require_POST
def server_lock_break_view(request: HttpRequest, slug: str, server_id: int) -> HttpResponse:
    server, membership = get_server_for_user(request, slug, server_id, role=CONFIGURE_ROLES)
    try:
        result = server_lock_break(
            server=server, user=membership.user, force=request.POST.get("force") == "1"
        )
    except LockBreakRefused as exc:
        messages.error(request, str(exc))
    else:
        (messages.success if result.broken else messages.info)(request, result.message)
    return redirect(reverse("server-detail", args=(slug, server_id)) + "#lock")
