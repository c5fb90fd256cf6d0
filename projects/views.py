"""Dashboard pages for projects: the overview, a project's page, its settings, members and
audit log. Each view parses, authorises through one access helper (projects.dashboard),
calls a service and renders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db import models
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from builds.dora import project_dora
from builds.engine import settings_file
from builds.engine.git import redact_url
from builds.engine.ssh import public_key_fingerprint
from builds.engine.variables import DOCUMENTED
from builds.forms import ScheduleForm
from builds.integrations import integration_create, integration_delete, integration_update
from builds.models import Kind, ScheduleRun, WebhookDelivery, WebhookProvider
from builds.notifications import notification_create, notification_delete, notification_update
from builds.presenters import dora_chart_data
from builds.schedules import schedule_create, schedule_delete, schedule_update
from projects.dashboard import (
    SERVICE_ERRORS,
    ProjectMirror,
    add_service_error,
    error_message,
    get_member_for_user,
    get_project_for_user,
    get_setting_for_user,
    page_context,
    server_rows,
    with_servers,
)
from projects.forms import (
    BuildCommandForm,
    CommandForm,
    ConfigFileForm,
    EnvironmentVariableForm,
    ExcludedFileForm,
    FreezeWindowForm,
    GroupForm,
    IntegrationForm,
    MemberAddForm,
    MemberRoleForm,
    NotificationForm,
    ProjectForm,
    SettingForm,
    SettingsImportForm,
    TemplateSaveForm,
)
from projects.freeze import frozen_projects
from projects.models import (
    CONFIGURE_ROLES,
    DEPLOY_ROLES,
    AuditEvent,
    Membership,
    NotificationDelivery,
    Project,
    SiteSettings,
)
from projects.services import (
    ensure_may_create_projects,
    freeze_window_create,
    freeze_window_delete,
    freeze_window_update,
    may_delete_template,
    member_add,
    member_remove,
    member_update,
    project_badge_rotate,
    project_delete,
    project_register,
    project_repository_check,
    project_servers_by_id,
    project_setting_create,
    project_setting_delete,
    project_setting_update,
    project_template_delete,
    project_template_save,
    project_trust_repository_host_key,
    project_update,
    repository_ssh_host,
    template_source,
    templates_for,
)
from projects.settings_code import (
    SettingsFileError,
    settings_export_yaml,
    settings_from_file_keys,
    settings_import,
)
from servers.forms import HealthCheckForm, TrustForm
from servers.services import health_check_create, health_check_delete, health_check_update

RECENT_DEPLOYMENTS = 10
# The project page's deployment history chart (builds.dora), in UTC days.
HISTORY_DAYS = 30
RECENT_DELIVERIES = 10
AUDIT_PAGE_SIZE = 50


def _user_id(request: HttpRequest) -> int:
    return int(request.user.pk or 0)


# --------------------------------------------------------------------------- the overview


@login_required
@require_GET
def index(request: HttpRequest) -> HttpResponse:
    memberships = list(
        Membership.objects.filter(user_id=_user_id(request))
        .select_related("project")
        .order_by("project__name")
    )
    projects = [membership.project for membership in memberships]
    deliveries = {
        delivery.project_id: delivery
        for delivery in WebhookDelivery.objects.filter(project__in=projects).latest_per_project(1)
    }
    frozen = frozen_projects([project.pk for project in projects], timezone.now())
    cards = []
    for membership in memberships:
        project = membership.project
        groups, servers = server_rows(project)
        cards.append(
            {
                "project": project,
                "membership": membership,
                "groups": groups,
                "servers": servers,
                "repository": redact_url(project.repository_url),
                "delivery": deliveries.get(project.pk),
                "running": project.deployments.active().exclude(kind=Kind.PREVIEW).count(),
                "freeze": frozen.get(project.pk),
            }
        )
    return render(
        request,
        "projects/index.html",
        {
            "cards": cards,
            "any_running": any(card["running"] for card in cards),
            "may_create_projects": SiteSettings.load().may_create_projects(_owner(request)),
        },
    )


# --------------------------------------------------------------------------- a project


@login_required
@require_http_methods(["GET", "POST"])
def project_new(request: HttpRequest) -> HttpResponse:
    owner = _owner(request)
    ensure_may_create_projects(owner)
    templates = templates_for(owner)
    form = ProjectForm(request.POST or None, templates=templates)
    if request.method == "POST" and form.is_valid():
        try:
            project = project_register(owner=_owner(request), **form.service_data())
        except SERVICE_ERRORS as exc:
            add_service_error(form, exc)
        else:
            messages.success(
                request,
                f"{project.name} is ready. Add its public key to your servers (and to your Git "
                "host if the repository is private), then add a server.",
            )
            return redirect("project-detail", project.slug)
    saved = [source.saved for source in templates if source.saved is not None]
    return render(
        request,
        "projects/new.html",
        {
            "form": form,
            "saved_templates": [
                (template, may_delete_template(owner, template)) for template in saved
            ],
        },
    )


@login_required
@require_POST
def template_remove(request: HttpRequest, reference: str) -> HttpResponse:
    """Delete a saved template (its author or a site admin); projects made from it keep
    their settings."""
    owner = _owner(request)
    source = template_source(owner, reference)
    if source is None or source.saved is None:
        raise Http404("No such template")
    name = source.name
    project_template_delete(template=source.saved, actor=owner)
    messages.success(request, f"The template {name} was deleted.")
    return redirect("project-new")


def _owner(request: HttpRequest) -> Any:
    # login_required guarantees a real user; this keeps the type checker informed.
    return request.user


@login_required
@require_GET
def project_detail(request: HttpRequest, slug: str) -> HttpResponse:
    membership = get_project_for_user(request, slug)
    project = membership.project
    mirror = ProjectMirror(project)
    groups, servers = server_rows(project, mirror)
    deployments = with_servers(project.deployments.exclude(kind=Kind.PREVIEW)[:RECENT_DEPLOYMENTS])
    deliveries = project.webhook_deliveries.prefetch_related("deployments")[:RECENT_DELIVERIES]
    scheduled = list(project.schedules.all())
    schedule_runs = ScheduleRun.objects.filter(schedule__project=project).select_related(
        "schedule"
    )[:RECENT_SCHEDULE_RUNS]
    return render(
        request,
        "projects/detail.html",
        page_context(
            membership,
            tab="overview",
            groups=groups,
            servers=servers,
            deployments=deployments,
            any_active=any(deployment.is_active for deployment in deployments),
            deliveries=deliveries,
            repository=redact_url(project.repository_url),
            providers=WebhookProvider,
            schedules=scheduled,
            schedule_runs=schedule_runs,
            history=dora_chart_data(project_dora(project, days=HISTORY_DAYS)),
            history_days=HISTORY_DAYS,
        ),
    )


@login_required
@require_GET
def deployment_list(request: HttpRequest, slug: str) -> HttpResponse:
    membership = get_project_for_user(request, slug)
    previews = request.GET.get("previews") == "1"
    deployments = membership.project.deployments.all()
    if not previews:
        deployments = deployments.exclude(kind=Kind.PREVIEW)
    page = Paginator(deployments.order_by("-created_at", "-id"), 30).get_page(
        request.GET.get("page")
    )
    return render(
        request,
        "projects/deployments.html",
        page_context(
            membership,
            tab="deployments",
            page=page,
            deployments=with_servers(page.object_list),
            previews=previews,
        ),
    )


@login_required
@require_http_methods(["GET", "POST"])
def project_settings(request: HttpRequest, slug: str) -> HttpResponse:
    write = request.method == "POST"
    membership = get_project_for_user(request, slug, role=CONFIGURE_ROLES if write else None)
    project = membership.project
    form = _settings_form(membership, request.POST or None)
    if write and form.is_valid():
        try:
            project_update(project=project, actor=membership.user, **form.service_data())
        except SERVICE_ERRORS as exc:
            add_service_error(form, exc)
        else:
            messages.success(request, "Project settings saved.")
            return redirect("project-settings", project.slug)
    return _render_settings(request, membership, form)


def _settings_form(membership: Membership, data: Any = None) -> ProjectForm:
    form = ProjectForm(data, project=membership.project)
    if not membership.can_configure:
        _read_only(form)
        for secret in ("repository_token", "remove_repository_token"):
            form.fields.pop(secret, None)
    return form


def _render_settings(
    request: HttpRequest, membership: Membership, form: ProjectForm | None = None, **extra: Any
) -> HttpResponse:
    project = membership.project
    from_file = settings_from_file_keys(project)
    return render(
        request,
        "projects/settings.html",
        page_context(
            membership,
            tab="settings",
            section="general",
            form=form or _settings_form(membership),
            repository_ssh=repository_ssh_host(project.repository_url) is not None,
            repository_host_key=public_key_fingerprint(project.repository_host_key),
            from_file_key="shared_paths" if "shared_paths" in from_file else "",
            from_file_revision=from_file.get("shared_paths", ""),
            **{
                "template_form": TemplateSaveForm(prefix="template"),
                "import_form": SettingsImportForm(prefix="import"),
                **extra,
            },
        ),
    )


@login_required
@require_POST
def template_save(request: HttpRequest, slug: str) -> HttpResponse:
    """Save the project's settings, without their secrets, as a template."""
    membership = get_project_for_user(request, slug, role=CONFIGURE_ROLES)
    form = TemplateSaveForm(request.POST, prefix="template")
    if form.is_valid():
        try:
            template = project_template_save(
                project=membership.project, actor=membership.user, **form.cleaned_data
            )
        except SERVICE_ERRORS as exc:
            add_service_error(form, exc)
        else:
            messages.success(
                request,
                f"Saved as the template {template.name}: choose it on the New project page.",
            )
            return redirect(reverse("project-settings", args=[slug]) + "#save-as-template")
    return _render_settings(request, membership, template_form=form)


@login_required
@require_GET
def settings_export(request: HttpRequest, slug: str) -> HttpResponse:
    """The project's settings as a YAML file to download (secrets left out); any member."""
    membership = get_project_for_user(request, slug)
    response = HttpResponse(
        settings_export_yaml(membership.project), content_type="application/yaml; charset=utf-8"
    )
    response["Content-Disposition"] = (
        f'attachment; filename="{membership.project.slug}.slipway.yml"'
    )
    return response


@login_required
@require_POST
def settings_import_view(request: HttpRequest, slug: str) -> HttpResponse:
    """Apply settings exported as YAML (admins); the page lists what changes, or would."""
    membership = get_project_for_user(request, slug, role=CONFIGURE_ROLES)
    form = SettingsImportForm(request.POST, prefix="import")
    changes = None
    if form.is_valid():
        try:
            changes = settings_import(
                project=membership.project,
                actor=membership.user,
                content=form.cleaned_data["yaml"].encode(),
                dry_run=form.cleaned_data["dry_run"],
            )
        except SettingsFileError as exc:
            form.add_error("yaml", exc.located)
        except SERVICE_ERRORS as exc:
            add_service_error(form, exc)
        else:
            if not form.cleaned_data["dry_run"]:
                messages.success(
                    request,
                    f"Imported: {', '.join(changes)} changed." if changes else "Nothing changed.",
                )
                return redirect(reverse("project-settings", args=[slug]) + "#settings-as-code")
    return _render_settings(
        request,
        membership,
        import_form=form,
        import_changes=changes,
        import_dry_run=bool(form.is_valid() and form.cleaned_data["dry_run"]),
    )


@login_required
@require_POST
def badge_rotate(request: HttpRequest, slug: str) -> HttpResponse:
    """New badge URLs for the project and its servers; the old ones answer 404."""
    membership = get_project_for_user(request, slug, role=CONFIGURE_ROLES)
    project_badge_rotate(project=membership.project, actor=membership.user)
    messages.success(request, "New badge URLs: update the READMEs that show the old ones.")
    return redirect(reverse("project-detail", args=[slug]) + "#badges")


@login_required
@require_POST
def repository_check(request: HttpRequest, slug: str) -> HttpResponse:
    """Show the host key the ssh repository's host offers (to compare, then trust)."""
    membership = get_project_for_user(request, slug, role=DEPLOY_ROLES)
    check = project_repository_check(project=membership.project)
    return _render_settings(request, membership, repository_check=check)


@login_required
@require_POST
def repository_trust(request: HttpRequest, slug: str) -> HttpResponse:
    membership = get_project_for_user(request, slug, role=CONFIGURE_ROLES)
    form = TrustForm(request.POST)
    if not form.is_valid():
        return _render_settings(request, membership, trust_error="No fingerprint was sent.")
    try:
        project = project_trust_repository_host_key(
            project=membership.project,
            actor=membership.user,
            fingerprint=form.cleaned_data["fingerprint"],
        )
    except SERVICE_ERRORS as exc:
        return _render_settings(request, membership, trust_error=error_message(exc))
    messages.success(
        request,
        f"The repository host key {public_key_fingerprint(project.repository_host_key)} is trusted.",
    )
    return redirect("project-settings", project.slug)


@login_required
@require_POST
def project_remove(request: HttpRequest, slug: str) -> HttpResponse:
    membership = get_project_for_user(request, slug, role=CONFIGURE_ROLES)
    name = membership.project.name
    try:
        project_delete(project=membership.project, actor=membership.user)
    except SERVICE_ERRORS as exc:
        messages.error(request, error_message(exc))
        return redirect("project-settings", slug)
    messages.success(request, f"Project {name} was deleted.")
    return redirect("index")


def _read_only(form: Any) -> None:
    for field in form.fields.values():
        field.disabled = True


# --------------------------------------------------------------------------- settings


def _generic_create(project: Project, actor: Any, model: Any, data: dict[str, Any]) -> Any:
    return project_setting_create(project=project, actor=actor, model=model, data=data)


def _generic_update(instance: Any, actor: Any, data: dict[str, Any]) -> Any:
    return project_setting_update(instance=instance, actor=actor, data=data)


def _generic_delete(instance: Any, actor: Any) -> None:
    project_setting_delete(instance=instance, actor=actor)


@dataclass(frozen=True)
class SettingServices:
    """What saves one kind of setting: projects.services' shared life cycle by default, or
    the kind's own services (health checks, notifications)."""

    create: Callable[[Project, Any, Any, dict[str, Any]], Any] = _generic_create
    update: Callable[[Any, Any, dict[str, Any]], Any] = _generic_update
    delete: Callable[[Any, Any], None] = _generic_delete


@dataclass(frozen=True)
class SettingPage:
    """One kind of project setting: its form, and how its pages speak of it."""

    form: type[SettingForm]
    title: str
    singular: str
    intro: str
    services: SettingServices = SettingServices()

    @property
    def model(self) -> type[models.Model]:
        return self.form.model


HEALTH_CHECK_SERVICES = SettingServices(
    create=lambda project, actor, model, data: health_check_create(
        project=project, actor=actor, **data
    ),
    update=lambda instance, actor, data: health_check_update(
        health_check=instance, actor=actor, **data
    ),
    delete=lambda instance, actor: health_check_delete(health_check=instance, actor=actor),
)
NOTIFICATION_SERVICES = SettingServices(
    create=lambda project, actor, model, data: notification_create(
        project=project, actor=actor, **data
    ),
    update=lambda instance, actor, data: notification_update(
        notification=instance, actor=actor, **data
    ),
    delete=lambda instance, actor: notification_delete(notification=instance, actor=actor),
)
INTEGRATION_SERVICES = SettingServices(
    create=lambda project, actor, model, data: integration_create(
        project=project, actor=actor, **data
    ),
    update=lambda instance, actor, data: integration_update(
        integration=instance, actor=actor, **data
    ),
    delete=lambda instance, actor: integration_delete(integration=instance, actor=actor),
)
# The last deliveries shown on a notification's or an integration's page.
RECENT_NOTIFICATION_DELIVERIES = 10
# The settings pages that list their object's recent deliveries, by the deliveries' field.
DELIVERY_FIELDS = {"notifications": "notification_id", "integrations": "integration_id"}
# Fields only admins see on a setting's page (a config file's contents; write-only secrets
# have nothing to show, so other members are not shown an empty box for them either).
ADMINS_ONLY = {
    "config-files": ("body",),
    "notifications": NotificationForm.SECRETS,
    "integrations": IntegrationForm.SECRETS,
}


SCHEDULE_SERVICES = SettingServices(
    create=lambda project, actor, model, data: schedule_create(
        project=project, actor=actor, **data
    ),
    update=lambda instance, actor, data: schedule_update(schedule=instance, actor=actor, **data),
    delete=lambda instance, actor: schedule_delete(schedule=instance, actor=actor),
)
FREEZE_WINDOW_SERVICES = SettingServices(
    create=lambda project, actor, model, data: freeze_window_create(
        project=project, actor=actor, **data
    ),
    update=lambda instance, actor, data: freeze_window_update(window=instance, actor=actor, **data),
    delete=lambda instance, actor: freeze_window_delete(window=instance, actor=actor),
)
# The last runs shown on a schedule's page.
RECENT_SCHEDULE_RUNS = 20

SETTINGS: dict[str, SettingPage] = {
    "build-commands": SettingPage(
        BuildCommandForm,
        "Build commands",
        "build command",
        "Run on the worker, in order, in a fresh checkout of the revision, before any file is "
        "sent. Their output is part of the deployment's log.",
    ),
    "commands": SettingPage(
        CommandForm,
        "SSH commands",
        "SSH command",
        "Run on the servers at one stage of each deployment, in the release directory, with "
        "%variables% replaced and the environment variables exported.",
    ),
    "config-files": SettingPage(
        ConfigFileForm,
        "Config files",
        "config file",
        "Kept in Slipway, not in the repository, and written into every release with "
        "%variables% replaced. Only admins see their contents.",
    ),
    "excluded-files": SettingPage(
        ExcludedFileForm,
        "Excluded files",
        "excluded file",
        "Never uploaded. A .deployignore file committed to the repository adds to these.",
    ),
    "environment": SettingPage(
        EnvironmentVariableForm,
        "Environment variables",
        "variable",
        "Exported to build commands and to commands on the servers. Secret values are "
        "write-only and masked in logs.",
    ),
    "groups": SettingPage(
        GroupForm,
        "Server groups",
        "group",
        "Servers deployed together, in order, from one branch, with a strategy: all at once, "
        "prepared then switched together, rolling, or canary first. A push deploys a group "
        "whole or not at all.",
    ),
    "health-checks": SettingPage(
        HealthCheckForm,
        "Health checks",
        "health check",
        "Is a server healthy on its new release? An HTTP request from the worker or a command "
        "over SSH, with retries. Failing after the switch rolls the server back by itself.",
        HEALTH_CHECK_SERVICES,
    ),
    "notifications": SettingPage(
        NotificationForm,
        "Notifications",
        "notification",
        "Tell people when a deployment starts, succeeds, fails or is rolled back: by email, "
        "Slack, Discord, Microsoft Teams or a signed webhook. URLs and secrets are write-only.",
        NOTIFICATION_SERVICES,
    ),
    "integrations": SettingPage(
        IntegrationForm,
        "Integrations",
        "integration",
        "Report each deployment to the Git host (GitHub commit statuses and deployments, GitLab "
        "deployments, Gitea commit statuses) and to Sentry (a release and a deploy). Tokens "
        "are encrypted and write-only; a failing provider never fails a deployment.",
        INTEGRATION_SERVICES,
    ),
    "schedules": SettingPage(
        ScheduleForm,
        "Schedules",
        "schedule",
        "Deployments that start by themselves: once at a date and time, every day, every week "
        "or by a cron expression, in a time zone. A slot is skipped, with the reason kept, when "
        "nothing changed, the project is locked or a freeze window is in force.",
        SCHEDULE_SERVICES,
    ),
    "freeze-windows": SettingPage(
        FreezeWindowForm,
        "Freeze windows",
        "freeze window",
        "Times when nothing deploys by itself: webhooks and schedules are refused, with the "
        "reason recorded; a project admin may still deploy by hand, giving a reason the audit "
        "log keeps. Rollbacks always run.",
        FREEZE_WINDOW_SERVICES,
    ),
}


def _setting_page(kind: str) -> SettingPage:
    try:
        return SETTINGS[kind]
    except KeyError:
        raise Http404("No such settings page") from None


#: The settings pages whose values a .slipway.yml may replace, with the file's key.
FILE_KEY_OF_PAGE = {
    "build-commands": "build_commands",
    "commands": "commands",
    "excluded-files": "excluded_files",
    "health-checks": "health_checks",
    "groups": "groups",
}


def _setting_context(membership: Membership, kind: str, page: SettingPage, **extra: Any) -> Any:
    instances = list(page.model._default_manager.filter(project=membership.project))
    from_file = settings_from_file_keys(membership.project)
    key = FILE_KEY_OF_PAGE.get(kind, "")
    return page_context(
        membership,
        tab="settings",
        section=kind,
        from_file_key=key if key in from_file else "",
        from_file_revision=from_file.get(key, ""),
        kind=kind,
        page=page,
        instances=instances,
        variables=DOCUMENTED if kind in ("config-files", "commands") else None,
        **extra,
    )


@login_required
@require_http_methods(["GET", "POST"])
def setting_list(request: HttpRequest, slug: str, kind: str) -> HttpResponse:
    page = _setting_page(kind)
    write = request.method == "POST"
    membership = get_project_for_user(request, slug, role=CONFIGURE_ROLES if write else None)
    form = page.form(request.POST or None, project=membership.project)
    if write and form.is_valid():
        try:
            instance = page.services.create(
                membership.project, membership.user, page.model, form.service_data()
            )
        except SERVICE_ERRORS as exc:
            add_service_error(form, exc)
        else:
            messages.success(request, f"Added the {page.singular} {instance}.")
            return redirect("setting-list", slug, kind)
    return render(
        request,
        "projects/setting_list.html",
        _setting_context(membership, kind, page, form=form if membership.can_configure else None),
    )


@login_required
@require_http_methods(["GET", "POST"])
def setting_edit(request: HttpRequest, slug: str, kind: str, pk: int) -> HttpResponse:
    page = _setting_page(kind)
    write = request.method == "POST"
    instance, membership = get_setting_for_user(
        request, slug, page.model, pk, role=CONFIGURE_ROLES if write else None
    )
    form = page.form(request.POST or None, project=membership.project, instance=instance)
    if not membership.can_configure:
        _read_only(form)
        for name in ADMINS_ONLY.get(kind, ()):
            form.fields.pop(name, None)
    if write and form.is_valid():
        try:
            page.services.update(instance, membership.user, form.service_data())
        except SERVICE_ERRORS as exc:
            add_service_error(form, exc)
        else:
            messages.success(request, f"Saved the {page.singular} {instance}.")
            return redirect("setting-list", slug, kind)
    deliveries = (
        NotificationDelivery.objects.filter(**{DELIVERY_FIELDS[kind]: instance.pk})[
            :RECENT_NOTIFICATION_DELIVERIES
        ]
        if kind in DELIVERY_FIELDS
        else None
    )
    runs = (
        ScheduleRun.objects.filter(schedule_id=instance.pk)[:RECENT_SCHEDULE_RUNS]
        if kind == "schedules"
        else None
    )
    return render(
        request,
        "projects/setting_edit.html",
        _setting_context(
            membership,
            kind,
            page,
            form=form,
            instance=instance,
            deliveries=deliveries,
            runs=runs,
        ),
    )


@login_required
@require_POST
def setting_delete(request: HttpRequest, slug: str, kind: str, pk: int) -> HttpResponse:
    page = _setting_page(kind)
    instance, membership = get_setting_for_user(request, slug, page.model, pk, role=CONFIGURE_ROLES)
    label = str(instance)
    page.services.delete(instance, membership.user)
    messages.success(request, f"Removed the {page.singular} {label}.")
    return redirect("setting-list", slug, kind)


# --------------------------------------------------------------------------- members


@login_required
@require_http_methods(["GET", "POST"])
def members(request: HttpRequest, slug: str) -> HttpResponse:
    write = request.method == "POST"
    membership = get_project_for_user(request, slug, role=CONFIGURE_ROLES if write else None)
    form = MemberAddForm(request.POST or None)
    if write and form.is_valid():
        try:
            added = member_add(
                project=membership.project, actor=membership.user, **form.cleaned_data
            )
        except SERVICE_ERRORS as exc:
            add_service_error(form, exc)
        else:
            messages.success(request, f"{added.user.get_username()} is now {added.role}.")
            return redirect("members", slug)
    everyone = membership.project.memberships.select_related("user").order_by("user__username")
    return render(
        request,
        "projects/members.html",
        page_context(
            membership,
            tab="members",
            members=everyone,
            form=form if membership.can_configure else None,
            role_form=MemberRoleForm(),
            project_servers=membership.project.servers.order_by("position", "name"),
        ),
    )


@login_required
@require_POST
def member_change(request: HttpRequest, slug: str, username: str) -> HttpResponse:
    member, caller = get_member_for_user(request, slug, username, role=CONFIGURE_ROLES)
    form = MemberRoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose admin, deployer or viewer.")
        return redirect("members", slug)
    try:
        member_update(membership=member, actor=caller.user, role=form.cleaned_data["role"])
    except SERVICE_ERRORS as exc:
        messages.error(request, error_message(exc))
    else:
        messages.success(request, f"{username} is now {member.role}.")
    return redirect("members", slug)


@login_required
@require_POST
def member_rights(request: HttpRequest, slug: str, username: str) -> HttpResponse:
    """Set a deployer's deploy rights: environments (comma-separated) and servers."""
    member, caller = get_member_for_user(request, slug, username, role=CONFIGURE_ROLES)
    environments = [name.strip() for name in request.POST.get("deploy_environments", "").split(",")]
    try:
        ids = [int(value) for value in request.POST.getlist("deploy_servers")]
        member_update(
            membership=member,
            actor=caller.user,
            deploy_environments=[name for name in environments if name],
            deploy_servers=project_servers_by_id(caller.project, ids),
        )
    except ValueError:
        messages.error(request, "Deploy servers: choose servers from the list.")
    except SERVICE_ERRORS as exc:
        messages.error(request, error_message(exc))
    else:
        messages.success(request, f"Deploy rights of {username} saved.")
    return redirect("members", slug)


@login_required
@require_POST
def member_delete(request: HttpRequest, slug: str, username: str) -> HttpResponse:
    member, caller = get_member_for_user(request, slug, username, role=CONFIGURE_ROLES)
    try:
        member_remove(membership=member, actor=caller.user)
    except SERVICE_ERRORS as exc:
        messages.error(request, error_message(exc))
    else:
        messages.success(request, f"{username} is no longer a member of {caller.project.name}.")
    return redirect("members", slug)


# --------------------------------------------------------------------------- audit log


@login_required
@require_GET
def audit_log(request: HttpRequest, slug: str) -> HttpResponse:
    membership = get_project_for_user(request, slug)
    events = AuditEvent.objects.filter(project=membership.project).select_related("actor")
    page = Paginator(events, AUDIT_PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "projects/audit.html", page_context(membership, tab="audit", page=page))


# --------------------------------------------------------------------------- help pages

DOCS_DIR = Path(settings.BASE_DIR) / "docs"
DOCS = (
    "webhooks",
    "servers",
    "deployments",
    "strategies",
    "notifications",
    "integrations",
    "network",
    "dashboard",
    "users",
    "api",
    "security",
    "reliability-invariant",
    "ftp",
    "s3",
    "bastion",
    "schedules",
    "freeze-windows",
    "locks",
    "badges",
    "blue-green",
    "templates",
    "drift",
    "metrics",
    "settings-as-code",
    "promote",
)


@login_required
@require_GET
def docs_page(request: HttpRequest, name: str) -> FileResponse:
    """The user guides of docs/, as plain text: they are readable as they are, and the
    dashboard has no Markdown renderer to trust."""
    if name not in DOCS or not (DOCS_DIR / f"{name}.md").is_file():
        raise Http404("No such page")
    return FileResponse(
        (DOCS_DIR / f"{name}.md").open("rb"), content_type="text/plain; charset=utf-8"
    )


@require_GET
def settings_schema(request: HttpRequest) -> FileResponse:
    """The JSON schema of .slipway.yml (docs/slipway.schema.json), public like any published
    schema: editors and CI validate a repository's file against it. It holds no secret."""
    response = FileResponse(
        settings_file.SCHEMA_PATH.open("rb"), content_type="application/schema+json"
    )
    response["Cache-Control"] = "public, max-age=3600"
    return response
