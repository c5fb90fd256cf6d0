"""Reaching a project's objects through the caller's membership: the lookups the dashboard
(projects/dashboard.py) and the API (deployer/api.py) share.

Each lookup answers the object, with its project set from the membership, or None when the
caller may not see it or it does not exist (the two are told apart by no one). What None and
a role that does not allow the action become (404 and 403 pages, JSON errors) is each
caller's own business.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TypeVar

from django.db import models
from django.db.models import QuerySet

from builds.models import Deployment
from projects.models import Membership
from servers.models import Release, Server

ModelT = TypeVar("ModelT", bound=models.Model)

# The largest id a database row can have (BigAutoField); larger ones in a URL cannot exist.
_MAX_ID = 2**63 - 1


def _storable(text: str) -> bool:
    # PostgreSQL refuses NUL in any query parameter; no stored name can contain one anyway.
    return "\x00" not in text


def _possible_id(pk: int) -> bool:
    return 0 < pk <= _MAX_ID


def role_allows(membership: Membership, roles: Collection[str]) -> bool:
    """Whether the member's role is one of ``roles``."""
    return membership.role in roles


def _memberships(user_id: int) -> QuerySet[Membership]:
    return Membership.objects.select_related("project", "user").filter(user_id=user_id)


def membership_of(user_id: int, slug: str) -> Membership | None:
    """The user's membership of project ``slug``, with the project and the user."""
    return _memberships(user_id).filter(project__slug=slug).first()


def membership_for_deployment(user_id: int, deployment_id: int) -> Membership | None:
    """The user's membership of the project that deployment ``deployment_id`` belongs to."""
    if not _possible_id(deployment_id):
        return None
    return _memberships(user_id).filter(project__deployments__pk=deployment_id).first()


def server_in(membership: Membership, server_id: int) -> Server | None:
    if not _possible_id(server_id):
        return None
    server = Server.objects.filter(project=membership.project, pk=server_id).first()
    if server is not None:
        server.project = membership.project
    return server


def deployment_in(membership: Membership, deployment_id: int) -> Deployment | None:
    if not _possible_id(deployment_id):
        return None
    deployment = (
        Deployment.objects.select_related("triggered_by", "group", "rollback_of")
        .filter(project=membership.project, pk=deployment_id)
        .first()
    )
    if deployment is not None:
        deployment.project = membership.project
    return deployment


def setting_in(membership: Membership, model: type[ModelT], pk: int) -> ModelT | None:
    """One of the project's settings (a command, a config file, a group...) by id."""
    if not _possible_id(pk):
        return None
    instance = model._default_manager.filter(project=membership.project, pk=pk).first()
    if instance is not None:
        setattr(instance, "project", membership.project)  # noqa: B010 (every setting has one)
    return instance


def member_in(membership: Membership, username: str) -> Membership | None:
    """The membership of the project's member named ``username``, with the user."""
    if not _storable(username):
        return None
    member = (
        Membership.objects.select_related("user")
        .filter(project=membership.project, user__username=username)
        .first()
    )
    if member is not None:
        member.project = membership.project
    return member


def release_on(server: Server, name: str) -> Release | None:
    """A release still kept on ``server`` (removed ones are gone for good)."""
    if not _storable(name):
        return None
    release = (
        server.releases.filter(removed_at__isnull=True, name=name)
        .select_related("deployment__triggered_by")
        .first()
    )
    if release is not None:
        release.server = server
    return release
