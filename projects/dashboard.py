"""What the dashboard's views share: one access helper per resource, the mapping of service
errors onto form fields, and the read-only view of a project's Git mirror.

Every object is reached through the caller's membership of its project: anyone else gets 404,
exactly as for an object that does not exist. A member whose role does not allow the action
gets 403 (``role`` lists the roles that may).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from django import forms
from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import OuterRef, Subquery
from django.http import Http404, HttpRequest
from django.urls import reverse
from django.utils import timezone

from builds.engine.errors import EngineError, InvalidInput
from builds.engine.git import Commit, Mirror
from builds.models import Deployment, DeploymentTarget, Kind
from builds.runner import project_dirs
from builds.services import (
    DeploymentFinished,
    DeploymentRefused,
    DeploymentWrongState,
    LockStateError,
)
from projects import access
from projects.access import ModelT
from projects.freeze import project_freeze
from projects.models import Membership, Project, is_site_admin
from servers.models import Release, Server, ServerGroup

logger = logging.getLogger(__name__)

FoundT = TypeVar("FoundT")

# Undeployed commits are counted up to this many ("100+").
AHEAD_LIMIT = 100


def _user_id(request: HttpRequest) -> int:
    return int(request.user.pk or 0)


def _authorise(membership: Membership, role: Sequence[str] | None) -> None:
    if role is not None and not access.role_allows(membership, role):
        raise PermissionDenied(
            f"You are {membership.role} of {membership.project.name}; this needs "
            f"{' or '.join(role)}."
        )


def _found(instance: FoundT | None, what: str) -> FoundT:
    if instance is None:
        raise Http404(f"No such {what}")
    return instance


def get_project_for_user(
    request: HttpRequest, slug: str, *, role: Sequence[str] | None = None
) -> Membership:
    """The caller's membership of project ``slug``, with the project; 404, or 403 by role."""
    membership = _found(access.membership_of(_user_id(request), slug), "project")
    _authorise(membership, role)
    return membership


def get_server_for_user(
    request: HttpRequest, slug: str, server_id: int, *, role: Sequence[str] | None = None
) -> tuple[Server, Membership]:
    membership = get_project_for_user(request, slug)
    server = _found(access.server_in(membership, server_id), "server")
    _authorise(membership, role)
    return server, membership


def get_deployment_for_user(
    request: HttpRequest, slug: str, deployment_id: int, *, role: Sequence[str] | None = None
) -> tuple[Deployment, Membership]:
    membership = get_project_for_user(request, slug)
    deployment = _found(access.deployment_in(membership, deployment_id), "deployment")
    _authorise(membership, role)
    return deployment, membership


def get_setting_for_user(
    request: HttpRequest,
    slug: str,
    model: type[ModelT],
    pk: int,
    *,
    role: Sequence[str] | None = None,
) -> tuple[ModelT, Membership]:
    """One of a project's settings (a command, a config file, a group...) by id."""
    membership = get_project_for_user(request, slug)
    instance = _found(access.setting_in(membership, model, pk), "setting")
    _authorise(membership, role)
    return instance, membership


def get_member_for_user(
    request: HttpRequest, slug: str, username: str, *, role: Sequence[str] | None = None
) -> tuple[Membership, Membership]:
    """(the member named ``username``, the caller's own membership)."""
    caller = get_project_for_user(request, slug)
    member = _found(access.member_in(caller, username), "member")
    _authorise(caller, role)
    return member, caller


def get_site_admin(request: HttpRequest) -> User:
    """The caller, who must be a site admin (users and site settings); 403 otherwise."""
    user = request.user
    if not isinstance(user, User) or not is_site_admin(user):
        raise PermissionDenied("Only site admins manage users and the site settings.")
    return user


def get_user_for_site_admin(request: HttpRequest, username: str) -> tuple[User, User]:
    """(the user named ``username``, the calling site admin); 403 for anyone else, 404 for
    a user that does not exist."""
    admin = get_site_admin(request)
    found = User.objects.filter(username=username).first() if "\x00" not in username else None
    return _found(found, "user"), admin


# --------------------------------------------------------------------------- errors


# Words that start a sentence of its own rather than one going on from the field's name.
_SENTENCE_STARTS = frozenset({"a", "an", "choose"})


def add_service_error(
    form: forms.BaseForm, exc: Exception, *, aliases: dict[str, str] | None = None
) -> None:
    """Show a service's error beside the field it names (else above the form).

    InvalidInput and DeploymentRefused name their field; a message that goes on from the
    field's name reads after its label ("Port 70000 is not between 1 and 65535.").
    """
    field_name: str | None = getattr(exc, "field", None)
    if isinstance(exc, InvalidInput):
        message = str(exc).removeprefix(f"{exc.field}: ")
    elif isinstance(exc, ValidationError):
        message = " ".join(exc.messages)
    else:
        message = str(exc)
    target = (aliases or {}).get(field_name, field_name) if field_name else None
    if target not in form.fields:
        target = None
    if message.split(" ", 1)[0] in _SENTENCE_STARTS:
        # A sentence of its own ("an HTTP check needs a URL"): it does not follow the label.
        message = message[:1].upper() + message[1:]
    elif field_name and message and (message[0].islower() or message[0] in "'\""):
        label = str(form.fields[target].label or target) if target else field_name
        label = label.replace("_", " ")
        message = f"{label[:1].upper()}{label[1:]} {message}"
    form.add_error(target, message)


SERVICE_ERRORS = (
    InvalidInput,
    DeploymentRefused,
    DeploymentFinished,
    DeploymentWrongState,
    LockStateError,
    ValidationError,
)


def error_message(exc: Exception) -> str:
    """A service error in words, for a message above the page (no field to put it by)."""
    if isinstance(exc, ValidationError):
        return " ".join(exc.messages)
    if isinstance(exc, InvalidInput):
        return str(exc).replace(f"{exc.field}: ", f"{exc.field.replace('_', ' ').capitalize()} ", 1)
    return str(exc)


# --------------------------------------------------------------------------- the mirror


class ProjectMirror:
    """Read-only questions to the worker's bare mirror of a project's repository.

    Pages never fetch: the mirror is as fresh as the last deployment or preview, and when it
    does not exist yet (no deployment so far, or a worker on another machine) every answer
    is "unknown". Answers are cached for the life of one request.
    """

    def __init__(self, project: Project) -> None:
        self.mirror: Mirror | None = None
        path, _ = project_dirs(project)
        if (path / "HEAD").is_file():
            try:
                self.mirror = Mirror(
                    path, project.repository_url, allow_local=settings.ALLOW_LOCAL_REPOSITORIES
                )
            except EngineError:
                self.mirror = None
        self._heads: dict[str, str | None] = {}
        self._ahead: dict[tuple[str, str], int | None] = {}

    @property
    def exists(self) -> bool:
        return self.mirror is not None

    def head(self, branch: str) -> str | None:
        if self.mirror is None:
            return None
        if branch not in self._heads:
            try:
                self._heads[branch] = self.mirror.branch_head(branch)
            except EngineError:
                self._heads[branch] = None
        return self._heads[branch]

    def ahead(self, live: str, head: str) -> int | None:
        """How many commits ``head`` has that ``live`` has not (up to AHEAD_LIMIT)."""
        if self.mirror is None:
            return None
        key = (live, head)
        if key not in self._ahead:
            try:
                # A live revision the mirror does not know (force-pushed away) has no
                # meaningful distance to the head: commits_between would count all history.
                self.mirror.resolve(live)
                commits = self.mirror.commits_between(live, head, limit=AHEAD_LIMIT)
                self._ahead[key] = len(commits)
            except EngineError:
                self._ahead[key] = None
        return self._ahead[key]

    def recent(self, branch: str, limit: int = 15) -> list[Commit]:
        head = self.head(branch)
        if self.mirror is None or head is None:
            return []
        try:
            return self.mirror.commits_between(None, head, limit=limit)
        except EngineError:
            logger.warning("Reading the mirror's history failed", exc_info=True)
            return []


# --------------------------------------------------------------------------- servers at a glance


@dataclass
class Row:
    """A server or a group as the overview and the project page show it."""

    name: str
    url: str
    environment: str
    branch: str
    is_group: bool = False
    members: list[str] = field(default_factory=list)
    trusted: bool = True
    enabled: bool = True
    #: The live revision; "" when nothing is live, None when the servers of a group differ.
    live_revision: str | None = ""
    live_since: datetime | None = None
    live_release: str = ""
    #: The last deployment (not a preview), and this server's part in it.
    last: Deployment | None = None
    last_status: str = ""
    head: str | None = None
    #: Commits on the branch head that are not live; None when it cannot be told.
    undeployed: int | None = None
    #: Blue-green groups: the colour the router sends the traffic to ("" before the first
    #: switch), each member's colour by name, and the group's id (for Switch back).
    blue_green: bool = False
    live_colour: str = ""
    idle_colour: str = ""
    colours: dict[str, str] = field(default_factory=dict)
    group_id: int | None = None

    @property
    def undeployed_display(self) -> str:
        if self.undeployed is None:
            return ""
        return f"{AHEAD_LIMIT}+" if self.undeployed >= AHEAD_LIMIT else str(self.undeployed)


def _undeployed(mirror: ProjectMirror, row: Row) -> None:
    row.head = mirror.head(row.branch) if row.branch else None
    if row.head is None or not row.live_revision:
        return
    row.undeployed = (
        0 if row.live_revision == row.head else mirror.ahead(row.live_revision, row.head)
    )


def server_rows(
    project: Project, mirror: ProjectMirror | None = None
) -> tuple[list[Row], list[Row]]:
    """(groups, servers) of ``project`` with what is live, the last deployment and what is
    waiting on the branch. A handful of queries per project, whatever its size."""
    mirror = mirror or ProjectMirror(project)
    servers = list(
        Server.objects.filter(project=project).annotate(
            last_target_id=Subquery(
                DeploymentTarget.objects.filter(server=OuterRef("pk"))
                .exclude(deployment__kind=Kind.PREVIEW)
                .order_by("-deployment__created_at", "-deployment_id")
                .values("pk")[:1]
            )
        )
    )
    targets = DeploymentTarget.objects.select_related("deployment__triggered_by").in_bulk(
        [getattr(s, "last_target_id") for s in servers if getattr(s, "last_target_id", None)]  # noqa: B009
    )
    live = {
        release.server_id: release
        for release in Release.objects.filter(server__project=project, live=True)
    }
    by_id: dict[int, Row] = {}
    rows = []
    for server in servers:
        server.project = project
        release = live.get(server.pk)
        target = targets.get(getattr(server, "last_target_id", None) or 0)
        row = Row(
            name=server.name,
            url=reverse("server-detail", args=[project.slug, server.pk]),
            environment=server.environment,
            branch=server.effective_branch,
            trusted=server.trusted,
            enabled=server.enabled,
            live_revision=release.revision if release else "",
            live_since=release.created_at if release else None,
            live_release=release.name if release else "",
            last=target.deployment if target else None,
            last_status=target.status if target else "",
        )
        _undeployed(mirror, row)
        by_id[server.pk] = row
        rows.append(row)

    groups = []
    for group in ServerGroup.objects.filter(project=project).prefetch_related("members"):
        member_ids = [member.server_id for member in group.members.all()]
        members = [by_id[pk] for pk in member_ids if pk in by_id]
        colours = {
            by_id[m.server_id].name: m.colour for m in group.members.all() if m.server_id in by_id
        }
        # A blue-green group's live revision is its live colour's; the other is idle.
        live_members = (
            [by_id[m.server_id] for m in group.members.all() if m.colour == group.live_colour]
            if group.is_blue_green and group.live_colour
            else members
        )
        revisions = {member.live_revision for member in live_members}
        last = (
            Deployment.objects.filter(group=group)
            .exclude(kind=Kind.PREVIEW)
            .select_related("triggered_by")
            .first()
        )
        row = Row(
            name=group.name,
            url=reverse("setting-edit", args=[project.slug, "groups", group.pk]),
            environment=group.environment,
            branch=group.branch or project.branch,
            is_group=True,
            members=[member.name for member in members],
            trusted=all(member.trusted for member in members),
            live_revision=revisions.pop() if len(revisions) == 1 else (None if revisions else ""),
            live_since=max((m.live_since for m in live_members if m.live_since), default=None),
            last=last,
            last_status=last.status if last else "",
            blue_green=group.is_blue_green,
            live_colour=group.live_colour,
            idle_colour=group.idle_colour,
            colours=colours if group.is_blue_green else {},
            group_id=group.pk,
        )
        _undeployed(mirror, row)
        groups.append(row)
    return groups, rows


def with_servers(deployments: Iterable[Deployment]) -> list[Deployment]:
    """Deployments with their targets' servers loaded (for lists)."""
    return list(
        Deployment.objects.filter(pk__in=[d.pk for d in deployments])
        .select_related("triggered_by", "group")
        .prefetch_related("targets__server")
        .order_by("-created_at", "-id")
    )


def page_context(membership: Membership, **extra: Any) -> dict[str, Any]:
    """What every project page's template needs to know about the caller."""
    return {
        "project": membership.project,
        "membership": membership,
        "can_deploy": membership.can_deploy,
        "can_configure": membership.can_configure,
        # The freeze in force now on any of its environments: the header's badge.
        "freeze": project_freeze(membership.project.pk, timezone.now()),
        **extra,
    }


def lock_reason_from(request: HttpRequest, default: str) -> str:
    """The lock a rollback form asks for: its reason (``default`` when left empty) when its
    "lock" box is ticked, else "" (no lock)."""
    if request.POST.get("lock") != "1":
        return ""
    return request.POST.get("lock_reason", "").strip() or default
