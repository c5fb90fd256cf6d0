"""Project services: the one place where projects, members and tokens are changed."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db import transaction
from django.utils.text import slugify

from projects.keys import generate_ed25519
from projects.models import ApiToken, Membership, Project, Role


def _unique_slug(name: str) -> str:
    base = slugify(name)[:90] or "project"
    slug, n = base, 2
    while Project.objects.filter(slug=slug).exists():
        slug, n = f"{base}-{n}", n + 1
    return slug


@transaction.atomic
def project_create(
    *,
    owner: User,
    name: str,
    repository_url: str,
    branch: str = "main",
    **fields: object,
) -> Project:
    slug = str(fields.pop("slug", "") or _unique_slug(name))
    keys = generate_ed25519(comment=f"slipway-{slug}")
    project = Project.objects.create(
        name=name,
        slug=slug,
        repository_url=repository_url,
        branch=branch,
        private_key=keys.private_key,
        public_key=keys.public_key,
        **fields,
    )
    Membership.objects.create(project=project, user=owner, role=Role.ADMIN)
    return project


def api_token_issue(*, user: User, name: str) -> tuple[ApiToken, str]:
    return ApiToken.issue(user=user, name=name)


def audit_record(
    *, project: Project | None, actor: User | None, action: str, target: str = "", **detail: object
) -> None:
    """Record one audit event. Never pass a secret in ``detail``: it is shown to members."""
    from projects.models import AuditEvent

    AuditEvent.objects.create(
        project=project,
        actor=actor if actor is not None and actor.is_authenticated else None,
        action=action,
        target=target[:255],
        detail=detail,
    )
