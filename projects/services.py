"""Project services: the one place where projects, members and tokens are changed."""

from __future__ import annotations

import hmac
import itertools
import logging
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, connection, models, transaction
from django.db.models import Max
from django.utils import timezone
from django.utils.text import slugify

from builds import cleanup, outbound
from builds.engine import ssh
from builds.engine.errors import EngineError, InvalidInput
from builds.engine.excludes import parse_rule
from builds.engine.git import (
    redact_url,
    remote_branches,
    ssh_host_of,
    validate_ref,
    validate_repository_url,
    validate_subdirectory,
)
from builds.engine.masking import config_file_skeleton
from builds.engine.release import validate_group, validate_mode, validate_relative_path
from builds.engine.router import validate_upstream
from builds.logs import user_group_name
from builds.models import ACTIVE
from deployer.db import project_lock
from projects.builtin_templates import BUILTIN_TEMPLATES, BuiltinTemplate
from projects.freeze import freeze_window_clean
from projects.keys import generate_ed25519
from projects.models import (
    ApiToken,
    AuditEvent,
    BuildCommand,
    Command,
    CommandRunOn,
    CommandStage,
    CommitDeploys,
    ConfigFile,
    EnvironmentVariable,
    ExcludedFile,
    FreezeWindow,
    Membership,
    OnDrift,
    Project,
    ProjectTemplate,
    Role,
    SiteSettings,
    TokenScope,
    badge_token,
    is_site_admin,
)
from servers.health import (
    HEALTH_CHECK_SETTINGS,
    blue_green_check,
    health_check_clean,
    strategy_clean,
)
from servers.models import Colour, GroupMember, HealthCheck, Server, ServerGroup

logger = logging.getLogger(__name__)

# The longest a token may live; longer-lived access is a token without expiry, said so.
MAX_TOKEN_DAYS = 3650
# Scopes from narrowest to widest.
SCOPE_RANK: dict[str, int] = {TokenScope.READ: 1, TokenScope.DEPLOY: 2, TokenScope.ADMIN: 3}


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


def token_expiry(
    *, days: int | None = None, at: datetime | None = None, now: datetime | None = None
) -> datetime | None:
    """When a token asked for with ``days`` (from now) or ``at`` (a moment) expires.

    Neither: None (valid until revoked). Raises InvalidInput naming ``expires_in_days`` or
    ``expires_at`` when both are given, the number of days is out of 1..MAX_TOKEN_DAYS, or
    the moment is not in the future.
    """
    now = now or timezone.now()
    if days is not None and at is not None:
        raise InvalidInput("expires_at", "give either a date or a number of days, not both.")
    if days is not None:
        if not 1 <= days <= MAX_TOKEN_DAYS:
            raise InvalidInput("expires_in_days", f"must be between 1 and {MAX_TOKEN_DAYS}.")
        return now + timedelta(days=days)
    if at is not None:
        if timezone.is_naive(at):
            at = timezone.make_aware(at, UTC)
        if at <= now:
            raise InvalidInput("expires_at", "is in the past; give a moment in the future.")
        if at > now + timedelta(days=MAX_TOKEN_DAYS):
            raise InvalidInput("expires_at", f"is more than {MAX_TOKEN_DAYS} days away.")
        return at
    return None


def api_token_issue(
    *,
    user: User,
    name: str,
    scope: str = TokenScope.ADMIN,
    expires_at: datetime | None = None,
) -> tuple[ApiToken, str]:
    """A new token and its secret (shown once). ``scope`` is a TokenScope value."""
    if scope not in TokenScope.values:
        raise InvalidInput("scope", f"must be one of {', '.join(TokenScope.values)}.")
    return ApiToken.issue(user=user, name=name, scope=scope, expires_at=expires_at)


def api_token_create(
    *,
    user: User,
    name: str,
    scope: str,
    expires_at: datetime | None = None,
    via: ApiToken | None = None,
) -> tuple[ApiToken, str]:
    """What a person asks for on the dashboard or the API: a named token, recorded in the
    audit log.

    ``via`` is the token the request came with (None for the dashboard): a token never
    issues one with a wider scope or a later expiry than its own, so a stolen short-lived
    token cannot be turned into a lasting one. Raises InvalidInput naming the field.
    """
    name = name.strip()
    if not name:
        raise InvalidInput("name", "is empty.")
    if via is not None:
        if SCOPE_RANK.get(scope, 0) > SCOPE_RANK[via.scope]:
            raise InvalidInput(
                "scope", f"the token you use has scope {via.scope}; it cannot issue a wider one."
            )
        if via.expires_at is not None and (expires_at is None or expires_at > via.expires_at):
            raise InvalidInput(
                "expires_at",
                f"the token you use expires at {via.expires_at.isoformat()}; "
                "a token it issues must expire no later.",
            )
    with transaction.atomic():
        record, token = api_token_issue(
            user=user, name=name[:100], scope=scope, expires_at=expires_at
        )
        audit_record(
            project=None,
            actor=user,
            action="token.issued",
            target=str(record),
            token=record.pk,
            scope=record.scope,
            expires_at=expires_at.isoformat() if expires_at else None,
        )
    return record, token


def api_token_revoke(*, token: ApiToken, actor: User) -> None:
    """Revoke ``token`` at once; revoking it again changes nothing."""
    with transaction.atomic():
        revoked = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        if revoked:
            audit_record(
                project=None, actor=actor, action="token.revoked", target=str(token), token=token.pk
            )
    token.refresh_from_db(fields=["revoked_at"])


def audit_record(
    *, project: Project | None, actor: User | None, action: str, target: str = "", **detail: object
) -> None:
    """Record one audit event. Never pass a secret in ``detail``: it is shown to members."""
    AuditEvent.objects.create(
        project=project,
        actor=actor if actor is not None and actor.is_authenticated else None,
        action=action,
        target=target[:255],
        detail=detail,
    )


# --------------------------------------------------------------------------- shared helpers

ModelT = TypeVar("ModelT", bound=models.Model)
T = TypeVar("T")


def model_update(*, instance: ModelT, data: Mapping[str, Any]) -> list[str]:
    """Set the fields of ``data`` that differ, save only those, and return their names."""
    changed = [name for name, value in data.items() if getattr(instance, name) != value]
    for name in changed:
        setattr(instance, name, data[name])
    if changed:
        update_fields = list(changed)
        if any(field.name == "updated_at" for field in instance._meta.concrete_fields):
            update_fields.append("updated_at")
        instance.save(update_fields=update_fields)
    return changed


def _unique_in_project(
    model: type[models.Model],
    *,
    project: Project,
    field: str,
    value: object,
    instance: models.Model | None = None,
) -> None:
    taken = model._default_manager.filter(project=project, **{field: value})
    if instance is not None:
        taken = taken.exclude(pk=instance.pk)
    if taken.exists():
        raise InvalidInput(field, f"{value!r} is already used in project {project.slug}.")


def save_unique(save: Callable[[], T], *, field: str, value: object) -> T:
    """Run ``save`` in a savepoint; a unique constraint that a racing request won names ``field``."""
    try:
        with transaction.atomic():
            return save()
    except IntegrityError:
        raise InvalidInput(field, f"{value!r} is already used in this project.") from None


def _globs(value: object, field: str) -> list[str]:
    """Exclude-rule globs (builds/engine/excludes.py): a list of non-empty lines, no ``!``."""
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        raise InvalidInput(field, "must be a list of glob patterns such as staticfiles/.")
    globs = []
    for item in value:
        text = item.strip()
        if not text or text.startswith("#"):
            continue
        if text.startswith("!") or parse_rule(text) is None:
            raise InvalidInput(field, f"{text!r} is not a glob of paths (no '!', not empty).")
        globs.append(text)
    return globs


def _relative_paths(value: object, field: str) -> list[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        raise InvalidInput(field, "must be a list of relative paths.")
    paths = []
    for item in value:
        validate_relative_path(item, field)
        # Stored as typed, not as cleaned: a trailing "/" tells the engine it is a directory.
        paths.append(item.strip())
    return paths


def _refuse_nested(paths: list[str], field: str) -> None:
    """One path per place: ``storage/`` and ``storage/logs/`` together would link a path of
    shared/ into itself. Raises InvalidInput naming ``field`` and both paths."""
    cleaned = [path.strip().strip("/") for path in paths]
    for first, second in itertools.combinations(cleaned, 2):
        outer, inner = sorted((first, second), key=len)
        if inner == outer or inner.startswith(outer + "/"):
            raise InvalidInput(
                field,
                f"'{inner}' lies inside '{outer}'; list only '{outer}' (everything under it "
                "comes with it).",
            )


# --------------------------------------------------------------------------- projects

logger = logging.getLogger(__name__)

PROJECT_FIELDS = frozenset(
    {
        "name",
        "repository_url",
        "branch",
        "subdirectory",
        "shared_paths",
        "cache_paths",
        "generated_paths",
        "build_network",
        "export_ignore",
        "submodules",
        "on_drift",
        "drift_check_hours",
        "repository_token",
        "settings_from_repository",
        "artefacts_keep",
        "artefacts_keep_days",
        "commit_deploys",
    }
)
#: The most kept build outputs, and days, a project may ask for (docs/promote.md).
MAX_ARTEFACTS_KEEP = 1000
MAX_ARTEFACTS_KEEP_DAYS = 3650
# The longest interval between scheduled drift checks: a year, in hours.
MAX_DRIFT_CHECK_HOURS = 24 * 366


def project_clean(data: Mapping[str, Any]) -> dict[str, Any]:
    """Check a project's editable fields; raises InvalidInput naming the first bad field."""
    unknown = set(data) - PROJECT_FIELDS
    if unknown:
        field = sorted(unknown)[0]
        raise InvalidInput(field, "cannot be set on a project.")
    cleaned = dict(data)
    if "name" in cleaned:
        cleaned["name"] = str(cleaned["name"]).strip()
        if not cleaned["name"]:
            raise InvalidInput("name", "is empty.")
    if "repository_url" in cleaned:
        cleaned["repository_url"] = _valid_repository_url(str(cleaned["repository_url"]).strip())
        # The outbound-address policy, and never a local path into Slipway's own directories.
        outbound.repository_check(cleaned["repository_url"])
    if "branch" in cleaned:
        cleaned["branch"] = validate_ref(str(cleaned["branch"]).strip(), field="branch")
    if cleaned.get("subdirectory"):
        cleaned["subdirectory"] = validate_subdirectory(str(cleaned["subdirectory"]).strip())
    for field in ("shared_paths", "cache_paths"):
        if field in cleaned:
            cleaned[field] = _relative_paths(cleaned[field], field)
            _refuse_nested(cleaned[field], field)
    if "generated_paths" in cleaned:
        cleaned["generated_paths"] = _globs(cleaned["generated_paths"], "generated_paths")
    for field in ("build_network", "export_ignore", "submodules", "settings_from_repository"):
        if field in cleaned and not isinstance(cleaned[field], bool):
            raise InvalidInput(field, "must be true or false.")
    for field, most in (
        ("artefacts_keep", MAX_ARTEFACTS_KEEP),
        ("artefacts_keep_days", MAX_ARTEFACTS_KEEP_DAYS),
    ):
        if field in cleaned:
            value = cleaned[field]
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
                raise InvalidInput(field, f"must be a whole number from 0 (no limit) to {most}.")
    if "on_drift" in cleaned and cleaned["on_drift"] not in OnDrift.values:
        raise InvalidInput("on_drift", f"must be one of: {', '.join(OnDrift.values)}.")
    if "drift_check_hours" in cleaned:
        hours = cleaned["drift_check_hours"]
        if type(hours) is not int or not 0 <= hours <= MAX_DRIFT_CHECK_HOURS:
            raise InvalidInput(
                "drift_check_hours",
                f"must be a whole number of hours from 0 (no scheduled check) to "
                f"{MAX_DRIFT_CHECK_HOURS}.",
            )
    if "commit_deploys" in cleaned and cleaned["commit_deploys"] not in CommitDeploys.values:
        raise InvalidInput("commit_deploys", f"must be one of {', '.join(CommitDeploys.values)}.")
    return cleaned


def _valid_repository_url(url: str) -> str:
    """``url`` checked by the engine's rules; a local repository on a Slipway that refuses
    them is told the setting that allows them (SLIPWAY_ALLOW_LOCAL_REPOSITORIES)."""
    try:
        return validate_repository_url(url, allow_local=settings.ALLOW_LOCAL_REPOSITORIES)
    except InvalidInput:
        local = url.startswith("/") or url.lower().startswith("file:")
        if settings.ALLOW_LOCAL_REPOSITORIES or not local:
            raise
    raise InvalidInput(
        "repository_url",
        "is a local repository (a path or file:// on the Slipway host), which this Slipway "
        "refuses. To deploy from a repository on this host, its operator sets "
        "SLIPWAY_ALLOW_LOCAL_REPOSITORIES=true and restarts Slipway (see docs/network.md); "
        "otherwise use an https://host/owner/repo.git or git@host:owner/repo.git address.",
    )


def repository_branch_check(
    *,
    repository_url: str,
    branch: str,
    private_key: str = "",
    repository_token: str = "",
    repository_host_key: str = "",
) -> None:
    """Refuse a ``branch`` the repository does not have, listing those it has.

    The branches come from `git ls-remote` with the project's credentials and trusted host
    key, the outbound-address policy checked first, within SLIPWAY_FETCH_TIMEOUT. When they
    cannot be listed (the deploy key is not added yet, an ssh host key not trusted yet, the
    host unreachable) nothing is refused: the deployment will say what is wrong. A
    repository with no branch yet accepts any name. Raises InvalidInput naming ``branch``."""
    try:
        outbound.repository_check(repository_url)
        branches = remote_branches(
            repository_url,
            ssh_private_key=private_key or None,
            https_token=repository_token or None,
            allow_local=settings.ALLOW_LOCAL_REPOSITORIES,
            host_key=repository_host_key or None,
            timeout=settings.FETCH_TIMEOUT,
        )
    except EngineError as exc:
        logger.info("Branches of %s not checked: %s", redact_url(repository_url), exc)
        return
    if not branches or branch in branches:
        return
    shown = ", ".join(branches[:20]) + (
        f" and {len(branches) - 20} more" if len(branches) > 20 else ""
    )
    raise InvalidInput(
        "branch",
        f"'{branch}' is not a branch of {redact_url(repository_url)}. Its branches: {shown}.",
    )


def _project_branch_check(project: Project | None, cleaned: Mapping[str, Any]) -> None:
    """The branch check for a project being created (``project`` None) or changed."""
    if "branch" not in cleaned and "repository_url" not in cleaned:
        return
    values = {
        field: cleaned.get(field, getattr(project, field, ""))
        for field in ("repository_url", "branch", "repository_token", "private_key")
    }
    host_key = cleaned.get("repository_host_key", getattr(project, "repository_host_key", ""))
    repository_branch_check(
        repository_url=str(values["repository_url"]),
        branch=str(values["branch"] or "main"),
        private_key=str(values["private_key"] or ""),
        repository_token=str(values["repository_token"] or ""),
        repository_host_key=str(host_key or ""),
    )


def ensure_may_create_projects(user: User) -> None:
    """Raise PermissionDenied, saying why, unless ``user`` may create projects (SiteSettings)."""
    if not SiteSettings.load().may_create_projects(user):
        raise PermissionDenied(
            "Only site admins may create projects on this Slipway: ask a site admin to create "
            "it, or to let every signed-in user create projects (Users page, site settings)."
        )


def project_register(
    *,
    owner: User,
    name: str,
    repository_url: str,
    branch: str = "main",
    template: str = "",
    **fields: Any,
) -> Project:
    """What the API and the dashboard call to add a project: check the input, create the
    project with its key pair and the owner as admin, copy the settings of ``template`` (a
    built-in's slug or a saved template's id, see template_source) into it, and record it.
    Fields given here win over the template's (its shared paths, say).

    Raises PermissionDenied when the site setting "who may create projects" leaves the owner
    out (by default only site admins may: a project runs build commands on the worker), and
    InvalidInput naming ``template`` when there is no such template for the owner.
    """
    ensure_may_create_projects(owner)
    source = template_source(owner, template) if template else None
    if template and source is None:
        known = ", ".join(source.reference for source in templates_for(owner))
        raise InvalidInput("template", f"there is no template {template!r}; choose one of {known}.")
    if source is not None:
        defaults = {k: source.contents[k] for k in TEMPLATE_PROJECT_FIELDS if k in source.contents}
        fields = {**defaults, **fields}
    cleaned = project_clean(
        {"name": name, "repository_url": repository_url, "branch": branch, **fields}
    )
    _project_branch_check(None, cleaned)
    with transaction.atomic():
        project = project_create(owner=owner, **cleaned)
        if source is not None:
            template_apply(project=project, source=source)
        audit_record(
            project=project,
            actor=owner,
            action="project.created",
            target=project.slug,
            **({"template": source.name} if source is not None else {}),
        )
    return project


def project_badge_rotate(*, project: Project, actor: User) -> Project:
    """Give the project a new badge token: its badge URLs and its servers' change, the old
    ones answer 404 from now on (docs/badges.md). The caller checked ``actor`` may configure
    the project. Audited as ``project.badge_rotated`` (the token itself is not recorded)."""
    with transaction.atomic():
        project.badge_token = badge_token()
        project.save(update_fields=["badge_token", "updated_at"])
        audit_record(project=project, actor=actor, action="project.badge_rotated")
    return project


def project_update(*, project: Project, actor: User, **fields: Any) -> Project:
    cleaned = project_clean(fields)
    if "repository_url" in cleaned and repository_ssh_host(
        cleaned["repository_url"]
    ) != repository_ssh_host(project.repository_url):
        # A key trusted for one host says nothing about another.
        cleaned["repository_host_key"] = ""
    _project_branch_check(project, cleaned)
    with transaction.atomic():
        changed = model_update(instance=project, data=cleaned)
        if changed:
            audit_record(
                project=project,
                actor=actor,
                action="project.updated",
                target=project.slug,
                fields=sorted(changed),
            )
    return project


# --------------------------------------------------------------------------- repository host key


def repository_ssh_host(url: str) -> tuple[str, int] | None:
    """(host, port) ssh connects to for an ssh:// or git@host:path URL; None for other URLs."""
    try:
        validate_repository_url(url, allow_local=True)
        return ssh_host_of(url)
    except InvalidInput:
        return None


@dataclass(frozen=True)
class RepositoryHostCheck:
    """What "Check the host key" found for a project's ssh repository."""

    #: The repository is fetched over ssh (otherwise there is no host key to pin).
    ssh: bool
    address: str = ""
    host_key_fingerprint: str | None = None
    host_key_type: str | None = None
    #: The offered key is the trusted one.
    trusted: bool = False
    #: The trusted key's fingerprint ("" when none is trusted yet).
    pinned_fingerprint: str = ""
    error: str = ""


def project_repository_check(*, project: Project) -> RepositoryHostCheck:
    """Read the host key the repository's ssh host offers and compare it with the trusted one.

    Never raises for a problem on the far side: the answer's ``error`` says what is wrong."""
    host = repository_ssh_host(project.repository_url)
    pinned = ssh.public_key_fingerprint(project.repository_host_key)
    if host is None:
        return RepositoryHostCheck(ssh=False, error="The repository is not reached over ssh.")
    address = ssh.format_address(*host)
    try:
        # The outbound-address policy first: a refused address is never probed.
        outbound.repository_check(project.repository_url)
        offered = ssh.probe_host_key(*host)
    except InvalidInput as exc:
        return RepositoryHostCheck(
            ssh=True, address=address, pinned_fingerprint=pinned, error=str(exc)
        )
    except EngineError as exc:
        if not exc.user_facing:
            logger.warning("Probing %s failed", address, exc_info=exc)
        reason = str(exc) if exc.user_facing else "probing it failed on Slipway's side"
        return RepositoryHostCheck(
            ssh=True, address=address, pinned_fingerprint=pinned, error=reason
        )
    except Exception as exc:  # a network library's surprise must not become a 500
        logger.warning("Probing %s failed", address, exc_info=True)
        return RepositoryHostCheck(
            ssh=True,
            address=address,
            pinned_fingerprint=pinned,
            error=f"Cannot reach {address}: {exc}",
        )
    trusted = bool(pinned) and hmac.compare_digest(pinned.encode(), offered.fingerprint.encode())
    if trusted:
        error = ""
    elif not pinned:
        error = (
            f"{address} offered the host key {offered.key_type} {offered.fingerprint}, which is "
            "not trusted yet. Compare it with `ssh-keygen -lf` on the Git server (or the "
            "fingerprints your Git host publishes), then trust it."
        )
    else:
        error = (
            f"Host key for {address} has changed: trusted {pinned}, offered "
            f"{offered.fingerprint}. If the Git server was rebuilt on purpose, check the new "
            "key and trust it again."
        )
    return RepositoryHostCheck(
        ssh=True,
        address=address,
        host_key_fingerprint=offered.fingerprint,
        host_key_type=offered.key_type,
        trusted=trusted,
        pinned_fingerprint=pinned,
        error=error,
    )


def project_trust_repository_host_key(
    *, project: Project, actor: User, fingerprint: str
) -> Project:
    """Trust the repository host's key, if ``fingerprint`` is what the host offers right now.

    Raises InvalidInput naming ``fingerprint`` (malformed, another key offered, host not
    reachable) or ``repository_url`` (not an ssh repository); see ssh.confirm_host_key."""
    host = repository_ssh_host(project.repository_url)
    if host is None:
        raise InvalidInput(
            "repository_url", "is not an ssh:// or git@host:path repository: no host key to trust."
        )
    outbound.repository_check(project.repository_url)
    offered = ssh.confirm_host_key(*host, fingerprint)
    previous = ssh.public_key_fingerprint(project.repository_host_key)
    with transaction.atomic():
        model_update(instance=project, data={"repository_host_key": offered.public_key})
        audit_record(
            project=project,
            actor=actor,
            action="repository_host_key.trusted",
            target=ssh.format_address(*host),
            fingerprint=offered.fingerprint,
            previous=previous,
        )
    return project


def project_delete(*, project: Project, actor: User) -> None:
    with transaction.atomic():
        # The project's lock (deployer.db's lock order): no deployment is created, claimed or
        # recorded between this check and the delete.
        project_lock(project.pk)
        if project.deployments.filter(status__in=ACTIVE).exists():
            raise ValidationError(
                f"Project {project.slug} has deployments in progress; cancel them or wait "
                "until they finish, then delete it."
            )
        # Recorded without the project, which takes its own events with it.
        audit_record(
            project=None,
            actor=actor,
            action="project.deleted",
            target=project.slug,
            name=project.name,
        )
        members = list(project.memberships.values_list("user_id", flat=True))
        project_id = project.pk
        project.delete()
        for user_id in members:
            close_user_sockets(user_id, project_id)
        # Its mirror, workspace, cache and build home, here and on every worker, once the
        # row is gone.
        transaction.on_commit(
            lambda: cleanup.project_files_remove_everywhere(project_id), robust=True
        )


# --------------------------------------------------------------------------- members


def close_user_sockets(user_id: int, project_id: int | None = None) -> None:
    """Close the user's open live-log WebSockets that their access no longer allows: those of
    project ``project_id``, or of every project when None (a deactivated user).

    Call it after changing the access (a membership removed, a role changed, ``is_active``
    cleared); inside a transaction it waits for the commit, so the sockets re-check what was
    committed. Each socket re-reads the membership and closes (code 4403, after an
    ``access_revoked`` message) only when it may no longer see its deployment. Best effort
    like every broadcast (builds.logs): a lost message leaves a socket open until it
    reconnects, when the check at connect refuses it.
    """

    def send() -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        try:
            async_to_sync(layer.group_send)(
                user_group_name(user_id), {"type": "access.revoked", "project_id": project_id}
            )
        except Exception:  # the broadcast is best effort by design
            logger.warning("Closing the sockets of user %s failed", user_id, exc_info=True)

    transaction.on_commit(send)


def _ensure_an_admin_remains(project: Project, *, leaving: Membership) -> None:
    # Locking the project's memberships makes two admins who demote each other at once
    # queue up, so the second sees the first's change and is refused.
    admins = list(
        Membership.objects.select_for_update()
        .filter(project=project, role=Role.ADMIN)
        .values_list("pk", flat=True)
    )
    if admins == [leaving.pk]:
        raise ValidationError(
            f"{leaving.user.get_username()} is the last admin of {project.slug}; "
            "make another member admin first."
        )


def member_add(*, project: Project, actor: User, username: str, role: str) -> Membership:
    user = User.objects.filter(username=username).first()
    if user is None:
        raise InvalidInput("username", f"there is no user named {username!r}.")
    if role not in Role.values:
        raise InvalidInput("role", f"must be one of {', '.join(Role.values)}.")
    if Membership.objects.filter(project=project, user=user).exists():
        raise InvalidInput("username", f"{username} is already a member of {project.slug}.")
    with transaction.atomic():
        membership = save_unique(
            lambda: Membership.objects.create(project=project, user=user, role=role),
            field="username",
            value=username,
        )
        audit_record(
            project=project, actor=actor, action="member.added", target=username, role=role
        )
    return membership


MAX_DEPLOY_ENVIRONMENTS = 50


def project_servers_by_id(project: Project, ids: Sequence[int]) -> list[Server]:
    """The servers of ``project`` with these ids, in that order; InvalidInput naming
    ``deploy_servers`` for an id that is not one of them."""
    storable = [pk for pk in ids if 0 < pk < 2**63]  # SQLite overflows on larger ones
    found = {
        server.pk: server for server in Server.objects.filter(project=project, pk__in=storable)
    }
    missing = [str(pk) for pk in ids if pk not in found]
    if missing:
        raise InvalidInput(
            "deploy_servers", f"{', '.join(missing)}: not a server of {project.name}."
        )
    return [found[pk] for pk in dict.fromkeys(ids)]


def deploy_environments_clean(value: Any) -> list[str]:
    """A deployer's environments: a list of names (each 1 to 50 characters, as a server's
    ``environment``), deduplicated in order; InvalidInput naming ``deploy_environments``."""
    if not isinstance(value, list | tuple):
        raise InvalidInput("deploy_environments", "must be a list of environment names.")
    names: list[str] = []
    for item in value:
        name = str(item).strip() if isinstance(item, str) else ""
        if not name or len(name) > 50 or not name.isprintable():
            raise InvalidInput(
                "deploy_environments",
                f"{item!r} is not an environment name (1 to 50 printable characters, as on a "
                "server).",
            )
        if name not in names:
            names.append(name)
    if len(names) > MAX_DEPLOY_ENVIRONMENTS:
        raise InvalidInput(
            "deploy_environments", f"holds more than {MAX_DEPLOY_ENVIRONMENTS} names."
        )
    return names


def member_update(
    *,
    membership: Membership,
    actor: User,
    role: str | None = None,
    deploy_environments: Sequence[str] | None = None,
    deploy_servers: Sequence[Server] | None = None,
) -> Membership:
    """Change a member's role and, for a deployer, their deploy rights (docs/users.md#deploy-
    rights): ``deploy_environments`` names, ``deploy_servers`` servers of the project; both
    empty: every server. Left out (None): unchanged. InvalidInput names the field."""
    role = membership.role if role is None else role
    if role not in Role.values:
        raise InvalidInput("role", f"must be one of {', '.join(Role.values)}.")
    environments = (
        None if deploy_environments is None else deploy_environments_clean(deploy_environments)
    )
    servers = None if deploy_servers is None else list(deploy_servers)
    for server in servers or ():
        if server.project_id != membership.project_id:
            raise InvalidInput(
                "deploy_servers", f"server {server.pk} is not a server of this project."
            )
    with transaction.atomic():
        if membership.role == Role.ADMIN and role != Role.ADMIN:
            _ensure_an_admin_remains(membership.project, leaving=membership)
        previous = membership.role
        previous_rights = _rights_of(membership)
        data: dict[str, Any] = {"role": role}
        if environments is not None:
            data["deploy_environments"] = environments
        if environments is not None or servers is not None:
            kept_servers = servers if servers is not None else list(membership.deploy_servers.all())
            kept_environments = (
                environments if environments is not None else membership.deploy_environments
            )
            data["deploy_limited"] = bool(kept_environments or kept_servers)
        changed = model_update(instance=membership, data=data)
        if servers is not None:
            membership.deploy_servers.set(servers)
        rights = _rights_of(membership)
        if changed or rights != previous_rights:
            close_user_sockets(membership.user_id, membership.project_id)
            audit_record(
                project=membership.project,
                actor=actor,
                action="member.updated",
                target=membership.user.get_username(),
                role=role,
                previous_role=previous,
                deploy_rights=rights,
                previous_deploy_rights=previous_rights,
            )
    return membership


def _rights_of(membership: Membership) -> dict[str, Any]:
    return {
        "limited": membership.deploy_limited,
        "environments": list(membership.deploy_environments),
        "servers": sorted(membership.deploy_servers.values_list("name", flat=True)),
    }


def member_remove(*, membership: Membership, actor: User) -> None:
    with transaction.atomic():
        if membership.role == Role.ADMIN:
            _ensure_an_admin_remains(membership.project, leaving=membership)
        audit_record(
            project=membership.project,
            actor=actor,
            action="member.removed",
            target=membership.user.get_username(),
        )
        membership.delete()
        close_user_sockets(membership.user_id, membership.project_id)


# --------------------------------------------------------------------------- project settings
# Commands, config files, excluded files, environment variables, build commands and server
# groups share one life cycle: checked, saved with their servers, and recorded in the audit
# log by field name only (values may be secrets).

_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_TIMEOUT_SECONDS = 24 * 3600
MAX_POSITION = 1_000_000


def _clean_timeout(data: dict[str, Any]) -> None:
    timeout = data.get("timeout_seconds")
    if timeout is not None and not 1 <= int(timeout) <= MAX_TIMEOUT_SECONDS:
        raise InvalidInput("timeout_seconds", f"must be between 1 and {MAX_TIMEOUT_SECONDS}.")


def _clean_command(data: dict[str, Any]) -> None:
    if "command" in data and not str(data["command"]).strip():
        raise InvalidInput("command", "is empty.")
    if "stage" in data and data["stage"] not in CommandStage.values:
        raise InvalidInput("stage", f"must be one of {', '.join(CommandStage.values)}.")
    if "run_on" in data and data["run_on"] not in CommandRunOn.values:
        raise InvalidInput("run_on", f"must be one of {', '.join(CommandRunOn.values)}.")
    if "run_once" in data and not isinstance(data["run_once"], bool):
        raise InvalidInput("run_once", "must be true or false.")
    _clean_timeout(data)


def _clean_build_command(data: dict[str, Any]) -> None:
    if "command" in data and not str(data["command"]).strip():
        raise InvalidInput("command", "is empty.")
    _clean_timeout(data)
    globs = data.get("watch_globs", [])
    if not isinstance(globs, list) or not all(isinstance(g, str) and g.strip() for g in globs):
        raise InvalidInput("watch_globs", "must be a list of non-empty glob patterns.")


def _clean_config_file(data: dict[str, Any]) -> None:
    if "path" in data:
        data["path"] = validate_relative_path(str(data["path"]), "path")
    if data.get("mode"):
        data["mode"] = validate_mode(str(data["mode"]).strip(), "mode")
    if data.get("group"):
        data["group"] = validate_group(str(data["group"]).strip(), "group")


def _clean_excluded_file(data: dict[str, Any]) -> None:
    if "pattern" in data:
        data["pattern"] = str(data["pattern"]).strip()
        if not data["pattern"]:
            raise InvalidInput("pattern", "is empty.")
        try:
            parse_rule(data["pattern"])
        except InvalidInput as exc:
            raise InvalidInput("pattern", str(exc).removeprefix(f"{exc.field}: ")) from None


def _clean_environment_variable(data: dict[str, Any]) -> None:
    if "name" in data and not _SHELL_NAME.fullmatch(str(data["name"])):
        raise InvalidInput(
            "name",
            "must be a shell variable name: letters, digits and _, not starting with a digit.",
        )


def _clean_group(data: dict[str, Any]) -> None:
    data.update(strategy_clean(data))
    if "name" in data:
        data["name"] = str(data["name"]).strip()
        if not data["name"]:
            raise InvalidInput("name", "is empty.")
    if data.get("branch"):
        data["branch"] = validate_ref(str(data["branch"]), field="branch")


@dataclass(frozen=True)
class _SettingKind:
    label: str
    clean: Callable[[dict[str, Any]], None]
    #: The field that is unique within a project, if any.
    unique: str | None = None
    #: Whether the model has a ``position`` that new rows append to.
    positioned: bool = False


_SETTING_KINDS: dict[type[models.Model], _SettingKind] = {
    Command: _SettingKind("command", _clean_command, positioned=True),
    BuildCommand: _SettingKind("build_command", _clean_build_command, positioned=True),
    ConfigFile: _SettingKind("config_file", _clean_config_file, unique="path"),
    ExcludedFile: _SettingKind("excluded_file", _clean_excluded_file),
    EnvironmentVariable: _SettingKind(
        "environment_variable", _clean_environment_variable, unique="name"
    ),
    ServerGroup: _SettingKind("group", _clean_group, unique="name"),
}


def _setting_kind(model: type[models.Model]) -> _SettingKind:
    try:
        return _SETTING_KINDS[model]
    except KeyError:
        raise TypeError(f"{model.__name__} is not a project setting") from None


def setting_clean(model: type[models.Model], data: dict[str, Any]) -> None:
    """Check (and tidy, in place) one setting's fields as the settings pages and the API
    check them; InvalidInput naming the field. TypeError for a model that is no setting."""
    _setting_kind(model).clean(data)


def _project_servers(project: Project, servers: Sequence[Server]) -> list[Server]:
    for server in servers:
        if server.project_id != project.pk:
            raise InvalidInput("servers", f"server {server.pk} is not part of {project.slug}.")
    if len({server.pk for server in servers}) != len(servers):
        raise InvalidInput("servers", "lists a server twice.")
    return list(servers)


def _set_servers(instance: models.Model, servers: list[Server]) -> None:
    if isinstance(instance, ServerGroup):
        # A group deploys its servers in this order; a server that stays keeps its colour.
        kept = {m.server_id: m for m in GroupMember.objects.filter(group=instance)}
        GroupMember.objects.filter(group=instance).delete()
        GroupMember.objects.bulk_create(
            GroupMember(
                group=instance,
                server=server,
                position=position,
                colour=kept[server.pk].colour if server.pk in kept else "",
                upstream=kept[server.pk].upstream if server.pk in kept else "",
            )
            for position, server in enumerate(servers)
        )
    else:
        getattr(instance, "servers").set(servers)  # noqa: B009 (a many-to-many on some kinds)


def _split_members(fields: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Pop a group's per-server values (``colours``, ``upstreams``: server id -> value)."""
    members: dict[str, dict[str, str]] = {}
    for name in ("colours", "upstreams"):
        if name in fields:
            given = fields.pop(name) or {}
            if not isinstance(given, Mapping):
                raise InvalidInput(name, "must map server ids to values")
            members[name] = {str(key): str(value).strip() for key, value in given.items()}
    if any(c and c not in Colour.values for c in members.get("colours", {}).values()):
        raise InvalidInput("colours", "each colour must be 'blue' or 'green'")
    for address in members.get("upstreams", {}).values():
        if address:
            validate_upstream(address, field="upstreams")
    return members


def _set_members(group: ServerGroup, members: Mapping[str, Mapping[str, str]]) -> list[str]:
    """Give the group's servers their colours and upstreams (the servers given are the
    group's); a server left out of a map keeps its value. Answers the maps that changed."""
    in_group = {str(m.server_id): m for m in group.members.all()}
    changed: list[str] = []
    for name, field in (("colours", "colour"), ("upstreams", "upstream")):
        for key, value in members.get(name, {}).items():
            if key not in in_group:
                raise InvalidInput(name, f"server {key} is not in this group")
            if getattr(in_group[key], field) != value:
                setattr(in_group[key], field, value)
                changed.append(name)
    if changed:
        GroupMember.objects.bulk_update(list(in_group.values()), ["colour", "upstream"])
    return sorted(set(changed))


def _group_saved(group: ServerGroup) -> None:
    """A blue-green group gets the default include path if it has none, and must be able
    to deploy as saved (servers.health.blue_green_check)."""
    if group.is_blue_green and group.router_kind == "nginx" and not group.router_include_path:
        group.router_include_path = group.default_include_path
        group.save(update_fields=["router_include_path"])
    blue_green_check(group)


def _split_servers(
    model: type[models.Model], project: Project, data: Mapping[str, Any]
) -> tuple[dict[str, Any], list[Server] | None]:
    fields = dict(data)
    servers: list[Server] | None = None
    relation = next((f for f in model._meta.get_fields() if f.name == "servers"), None)
    if relation is not None and relation.many_to_many and "servers" in fields:
        servers = _project_servers(project, list(fields.pop("servers")))
    return fields, servers


def project_setting_create(
    *, project: Project, actor: User, model: type[ModelT], data: Mapping[str, Any]
) -> ModelT:
    kind = _setting_kind(model)
    fields, servers = _split_servers(model, project, data)
    members = _split_members(fields) if model is ServerGroup else {}
    kind.clean(fields)
    if kind.unique is not None:
        _unique_in_project(model, project=project, field=kind.unique, value=fields[kind.unique])
    with transaction.atomic():
        if kind.positioned and fields.get("position") is None:
            last = model._default_manager.filter(project=project).aggregate(m=Max("position"))
            fields["position"] = min((last["m"] or 0) + 1, MAX_POSITION)

        def create() -> ModelT:
            return model._default_manager.create(project=project, **fields)

        if kind.unique is None:
            instance = create()
        else:
            instance = save_unique(create, field=kind.unique, value=fields[kind.unique])
        if servers is not None:
            _set_servers(instance, servers)
        if isinstance(instance, ServerGroup):
            _set_members(instance, members)
            _group_saved(instance)
        audit_record(
            project=project,
            actor=actor,
            action=f"{kind.label}.created",
            target=f"{kind.label} {instance}",
            fields=sorted(data),
        )
    return instance


def project_setting_update(*, instance: ModelT, actor: User, data: Mapping[str, Any]) -> ModelT:
    kind = _setting_kind(type(instance))
    project: Project = getattr(instance, "project")  # noqa: B009 (every setting has one)
    fields, servers = _split_servers(type(instance), project, data)
    members = _split_members(fields) if isinstance(instance, ServerGroup) else {}
    kind.clean(fields)
    if kind.unique is not None and kind.unique in fields:
        _unique_in_project(
            type(instance),
            project=project,
            field=kind.unique,
            value=fields[kind.unique],
            instance=instance,
        )
    with transaction.atomic():
        if kind.unique is None:
            changed = model_update(instance=instance, data=fields)
        else:
            changed = save_unique(
                lambda: model_update(instance=instance, data=fields),
                field=kind.unique,
                value=fields.get(kind.unique, getattr(instance, kind.unique)),
            )
        if servers is not None:
            _set_servers(instance, servers)
            changed.append("servers")
        if isinstance(instance, ServerGroup):
            changed += _set_members(instance, members)
            _group_saved(instance)
        if changed:
            audit_record(
                project=project,
                actor=actor,
                action=f"{kind.label}.updated",
                target=f"{kind.label} {instance}",
                fields=sorted(changed),
            )
    return instance


def project_setting_delete(*, instance: models.Model, actor: User) -> None:
    kind = _setting_kind(type(instance))
    project: Project = getattr(instance, "project")  # noqa: B009 (every setting has one)
    with transaction.atomic():
        audit_record(
            project=project,
            actor=actor,
            action=f"{kind.label}.deleted",
            target=f"{kind.label} {instance}",
        )
        instance.delete()


# --------------------------------------------------------------------------- freeze windows


def freeze_window_create(*, project: Project, actor: User, **data: Any) -> FreezeWindow:
    """Record a freeze window (see projects.freeze for the fields); InvalidInput naming the
    field."""
    fields = dict(data)
    freeze_window_clean(fields)
    with transaction.atomic():
        window = FreezeWindow.objects.create(project=project, **fields)
        audit_record(
            project=project,
            actor=actor,
            action="freeze_window.created",
            target=f"freeze window {window.name}",
            environment=window.environment,
        )
    return window


def freeze_window_update(*, window: FreezeWindow, actor: User, **data: Any) -> FreezeWindow:
    fields = dict(data)
    freeze_window_clean(fields, instance=window)
    with transaction.atomic():
        changed = model_update(instance=window, data=fields)
        if changed:
            audit_record(
                project=window.project,
                actor=actor,
                action="freeze_window.updated",
                target=f"freeze window {window.name}",
                fields=sorted(changed),
            )
    return window


def freeze_window_delete(*, window: FreezeWindow, actor: User) -> None:
    with transaction.atomic():
        audit_record(
            project=window.project,
            actor=actor,
            action="freeze_window.deleted",
            target=f"freeze window {window.name}",
        )
        window.delete()


# --------------------------------------------------------------------------- templates
# A template document (docs/templates.md) is plain JSON: the project fields below, and one
# list per kind of setting, each item holding that setting's fields. Built-in templates
# (projects/builtin_templates.py) and saved ones (ProjectTemplate.contents) share it.

TEMPLATE_PROJECT_FIELDS = (
    "shared_paths",
    "cache_paths",
    "generated_paths",
    "build_network",
    "export_ignore",
    "submodules",
)
TEMPLATE_SETTINGS: dict[str, tuple[type[models.Model], tuple[str, ...]]] = {
    "build_commands": (
        BuildCommand,
        ("command", "description", "timeout_seconds", "halt_on_error", "watch_globs"),
    ),
    "commands": (
        Command,
        (
            "command",
            "description",
            "stage",
            "run_on",
            "run_once",
            "halt_on_error",
            "timeout_seconds",
        ),
    ),
    "config_files": (ConfigFile, ("path", "body", "description", "mode", "group")),
    "environment_variables": (
        EnvironmentVariable,
        ("name", "value", "secret", "build", "servers"),
    ),
}


@dataclass(frozen=True)
class TemplateSource:
    """A template a user may start a project from: built-in or saved."""

    #: What the API's ``template`` and the dashboard's picker take: a built-in's slug, or a
    #: saved template's id as text.
    reference: str
    name: str
    description: str
    contents: Mapping[str, Any]
    builtin: bool
    saved: ProjectTemplate | None = None


def _builtin_source(builtin: BuiltinTemplate) -> TemplateSource:
    return TemplateSource(
        reference=builtin.slug,
        name=builtin.name,
        description=builtin.description,
        contents=builtin.contents,
        builtin=True,
    )


def saved_template_source(template: ProjectTemplate) -> TemplateSource:
    return TemplateSource(
        reference=str(template.pk),
        name=template.name,
        description=template.description,
        contents=template.contents,
        builtin=False,
        saved=template,
    )


def _saved_templates_visible(user: User) -> bool:
    # Saved templates serve one purpose, creating projects: they are shown to whoever may
    # create one (they hold other projects' commands and paths, if never their secrets).
    return SiteSettings.load().may_create_projects(user)


def templates_for(user: User) -> list[TemplateSource]:
    """The templates ``user`` may start a project from: the built-ins, then the saved ones
    by name (those only for users who may create projects)."""
    sources = [_builtin_source(builtin) for builtin in BUILTIN_TEMPLATES.values()]
    if _saved_templates_visible(user):
        sources += [saved_template_source(template) for template in ProjectTemplate.objects.all()]
    return sources


def template_source(user: User, reference: str) -> TemplateSource | None:
    """The template ``reference`` names (a built-in's slug or a saved template's id), if
    ``user`` may use it; None otherwise, whether it exists or not."""
    reference = str(reference).strip()
    if reference in BUILTIN_TEMPLATES:
        return _builtin_source(BUILTIN_TEMPLATES[reference])
    if not reference.isascii() or not reference.isdigit() or len(reference) > 18:
        return None
    if not _saved_templates_visible(user):
        return None
    template = ProjectTemplate.objects.filter(pk=int(reference)).first()
    return saved_template_source(template) if template is not None else None


def url_without_credentials(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def template_document(project: Project) -> dict[str, Any]:
    """The template a project's settings make, without a secret (docs/templates.md).

    Copied: the project's paths and switches, build commands, SSH commands (without their
    servers), excluded files, environment variables (a secret one by its name only, its
    value left empty), config files as skeletons (masking.config_file_skeleton: keys
    without their values) and health checks (a URL without its user and password). Never
    copied: the repository, its token and host key, the key pair, the webhook and badge
    tokens, servers and groups, notifications, schedules, freeze windows, members.
    """
    document: dict[str, Any] = {field: getattr(project, field) for field in TEMPLATE_PROJECT_FIELDS}
    for key, (model, fields) in TEMPLATE_SETTINGS.items():
        rows = []
        for instance in model._default_manager.filter(project=project):
            row = {field: getattr(instance, field) for field in fields}
            if isinstance(instance, ConfigFile):
                row["body"] = config_file_skeleton(instance.body)
            if isinstance(instance, EnvironmentVariable) and instance.secret:
                row["value"] = ""
            rows.append(row)
        document[key] = rows
    document["excluded_files"] = list(project.excluded_files.values_list("pattern", flat=True))
    checks = []
    for check in HealthCheck.objects.filter(project=project):
        row = {field: getattr(check, field) for field in HEALTH_CHECK_SETTINGS}
        row["url"] = url_without_credentials(check.url)
        checks.append(row)
    document["health_checks"] = checks
    return document


def template_apply(*, project: Project, source: TemplateSource) -> None:
    """Copy the template's settings (not its project fields, which project_register passes
    to project_clean) into the new ``project``. Each is checked as the settings pages and
    the API check it; a template that no longer passes raises InvalidInput naming
    ``template``. Call it inside the transaction that creates the project."""
    contents = source.contents
    try:
        for key, (model, fields) in TEMPLATE_SETTINGS.items():
            kind = _setting_kind(model)
            for position, item in enumerate(contents.get(key, []), start=1):
                data = {field: item[field] for field in fields if field in item}
                kind.clean(data)
                if kind.positioned:
                    data["position"] = position
                model._default_manager.create(project=project, **data)
        ExcludedFile.objects.bulk_create(
            ExcludedFile(project=project, pattern=pattern.strip())
            for pattern in contents.get("excluded_files", [])
            if pattern.strip()
        )
        for item in contents.get("health_checks", []):
            data = {field: item[field] for field in HEALTH_CHECK_SETTINGS if field in item}
            HealthCheck.objects.create(project=project, **health_check_clean(data))
    except InvalidInput as exc:
        raise InvalidInput("template", f"{source.name!r} cannot be applied: {exc}") from None


#: Categories of characters a template's name may not hold: control (Cc) and format (Cf:
#: zero-width spaces, direction overrides...) characters, surrogates (Cs), line and paragraph
#: separators (Zl, Zp). They are invisible or move text around, so a name holding one can
#: pass for another (a built-in's) in the picker.
_NAME_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
#: The advisory lock (PostgreSQL; SQLite runs one writer at a time) held while a template's
#: name is compared with the saved ones and the template is saved: the comparison is made in
#: Python (template_name_key), which no index of the database does.
_TEMPLATE_NAMES_LOCK = (0x51197C, 0)


def template_name_key(name: str) -> str:
    """What two template names are compared by: NFKC, case folded (NFKC again, as case
    folding may undo it), runs of spaces made one. "Laravel" in full-width letters, "LARAVEL"
    and "Laravel" have one key, and so have "STRASSE" and "straße", "Émile" and "émile"."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    return " ".join(folded.split())


def _template_name_clean(name: str) -> str:
    """``name`` stripped, or InvalidInput naming ``name``: empty, too long, holding a control
    or format character, or a built-in's name or slug (compared by template_name_key)."""
    name = str(name).strip()
    if not name:
        raise InvalidInput("name", "is empty.")
    if len(name) > 100:
        raise InvalidInput("name", "is longer than 100 characters.")
    for char in name:
        if unicodedata.category(char) in _NAME_REFUSED_CATEGORIES:
            raise InvalidInput(
                "name",
                f"holds an invisible or control character (U+{ord(char):04X}); "
                "type the name without it.",
            )
    key = template_name_key(name)
    for builtin in BUILTIN_TEMPLATES.values():
        if key in (template_name_key(builtin.slug), template_name_key(builtin.name)):
            raise InvalidInput("name", f"{name!r} is the name of a built-in template.")
    return name


def _lock_template_names() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", list(_TEMPLATE_NAMES_LOCK))


def project_template_save(
    *, project: Project, actor: User, name: str, description: str = ""
) -> ProjectTemplate:
    """Save ``project``'s settings as a template named ``name`` (template_document: no
    secret is copied). The caller checked ``actor`` may configure the project. Raises
    InvalidInput naming ``name`` (empty, too long, holding a control or format character,
    taken by a built-in or a saved template, compared by template_name_key) or
    ``description``."""
    name = _template_name_clean(name)
    description = str(description).strip()
    if len(description) > 255:
        raise InvalidInput("description", "is longer than 255 characters.")
    taken = f"a template named {name!r} exists already; choose another name."
    document = template_document(project)
    with transaction.atomic():
        # The saved names are few: compare them all here, under the lock. The database's
        # lower() differs between PostgreSQL and SQLite (which folds ASCII only), and neither
        # makes "ß" "ss" or a full-width letter an ASCII one.
        _lock_template_names()
        key = template_name_key(name)
        saved = ProjectTemplate.objects.values_list("name", flat=True)
        if any(template_name_key(other) == key for other in saved):
            raise InvalidInput("name", taken)
        try:
            with transaction.atomic():
                template = ProjectTemplate.objects.create(
                    name=name,
                    description=description,
                    contents=document,
                    source_project=project.slug,
                    created_by=actor,
                )
        except IntegrityError:
            raise InvalidInput("name", taken) from None
        audit_record(
            project=project,
            actor=actor,
            action="project.saved_as_template",
            target=f"template {name}",
            template=template.pk,
        )
    return template


def may_delete_template(user: User, template: ProjectTemplate) -> bool:
    """A saved template is deleted by the user who saved it, or by a site admin."""
    return is_site_admin(user) or template.created_by_id == user.pk


def project_template_delete(*, template: ProjectTemplate, actor: User) -> None:
    """Delete a saved template: its author or a site admin (PermissionDenied otherwise).
    Projects made from it keep their settings."""
    if not may_delete_template(actor, template):
        raise PermissionDenied(
            "Only the user who saved this template, or a site admin, may delete it."
        )
    with transaction.atomic():
        audit_record(
            project=None,
            actor=actor,
            action="template.deleted",
            target=f"template {template.name}",
            template=template.pk,
        )
        template.delete()
