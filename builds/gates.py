"""Deployment gates (docs/gates.md): what a deployment to an environment must pass before
anything is sent, per project and environment (GatePolicy).

The gates, each checked per environment of the deployment's servers (and group):

- ``ci``: the commit's statuses are all green. They come from the Git host's webhooks
  (GitHub and Gitea ``status`` events, GitLab ``Pipeline Hook``; builds.webhooks parses them,
  ``commit_status_record`` stores them), or are read from the host's API with a project
  integration's token (``commit_statuses_fetch``: GitHub's combined status, GitLab's commit
  statuses, Gitea's combined status). Slipway's own statuses (context ``slipway/...``,
  builds.integrations) are left out. Missing or pending: *pending*; a failure or error:
  *failed*.
- ``verified``: the same commit succeeded on a server of the policy's ``verified_on``
  environment ("verified on staging"). Not yet: *pending* while such a deployment is queued or
  running, or for an automatic deployment (the staging one may come next); *failed* for a
  person's.
- ``approvals``: N distinct members with the approver role (or admin), not the requester,
  approved the deployment (Approval rows). *pending* until then: a person's deployment is
  held like an automatic one.
- ``rollback_target``: every server has a release to roll back to (servers.models
  .rollback_target); ``health_checks``, ``notifications``: the project has a health check
  that runs on every server, an enabled notification. *failed* when not.

This module reads and records; builds.services decides (deployment_create holds, refuses or
lets through; deployment_gates_reevaluate releases a held deployment).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from builds import integrations, outbound
from builds.engine.errors import EngineError, InvalidInput
from builds.engine.git import redact_url, remote_refs
from builds.models import (
    Approval,
    CommitState,
    CommitStatus,
    Deployment,
    GatePolicy,
    Kind,
    Status,
    TargetStatus,
)
from projects.models import Integration, IntegrationKind, Membership, Notification, Project, Role
from servers.models import HealthCheck, Server, ServerGroup, rollback_target

logger = logging.getLogger(__name__)

PASSED = "passed"
PENDING = "pending"
FAILED = "failed"

#: The gates in the order the checklist shows them.
GATES = ("ci", "verified", "approvals", "rollback_target", "health_checks", "notifications")
GATE_LABELS = {
    "ci": "CI status is green",
    "verified": "Verified on an earlier environment",
    "approvals": "Approvals",
    "rollback_target": "A rollback target on every server",
    "health_checks": "Health checks configured",
    "notifications": "Notifications configured",
}
#: The roles a policy may ask approvers to hold; an admin may always approve.
APPROVER_ROLES = (Role.ADMIN, Role.DEPLOYER)
#: Commit status contexts Slipway reports itself (builds.integrations.CONTEXT_PREFIX).
OWN_CONTEXT_PREFIX = "slipway"
MAX_CONTEXT_LENGTH = 255
MAX_CONTEXTS = 50


@dataclass(frozen=True)
class GateCheck:
    """One gate's state for one environment: ``state`` is PASSED, PENDING or FAILED and
    ``detail`` says why, in a sentence safe to show any member."""

    gate: str
    environment: str
    state: str
    detail: str

    @property
    def label(self) -> str:
        return GATE_LABELS[self.gate]

    def as_dict(self) -> dict[str, str]:
        return {**asdict(self), "label": self.label}


@dataclass(frozen=True)
class Checklist:
    """A deployment's gates: ``checks`` in GATES order per environment, the commit checked."""

    sha: str
    checks: tuple[GateCheck, ...]
    max_wait_minutes: int

    @property
    def failed(self) -> list[GateCheck]:
        return [check for check in self.checks if check.state == FAILED]

    @property
    def pending(self) -> list[GateCheck]:
        return [check for check in self.checks if check.state == PENDING]

    @property
    def passed(self) -> bool:
        return all(check.state == PASSED for check in self.checks)

    def describe(self, checks: Iterable[GateCheck]) -> str:
        """``checks`` in one sentence: "production: CI status is green (…); …"."""
        return "; ".join(
            f"{check.environment or '(no environment)'}: {check.label} ({check.detail})"
            for check in checks
        )

    def as_dict(self) -> dict[str, Any]:
        return {"sha": self.sha, "checks": [check.as_dict() for check in self.checks]}


# --------------------------------------------------------------------------- policies


def environments_of(servers: Sequence[Server], group: ServerGroup | None) -> list[str]:
    """The environments a deployment to ``servers`` (and ``group``) reaches, sorted; a
    server without one counts as ""."""
    environments = {server.environment for server in servers}
    if group is not None and group.environment:
        environments.add(group.environment)
    return sorted(environments)


def policies_for(
    project: Project, servers: Sequence[Server], group: ServerGroup | None
) -> list[GatePolicy]:
    """The gate policies that apply to a deployment of ``project`` to these servers."""
    return list(
        GatePolicy.objects.filter(
            project=project, environment__in=environments_of(servers, group)
        ).order_by("environment")
    )


def needs_commit(policies: Sequence[GatePolicy]) -> bool:
    """Whether any of ``policies`` checks the commit (CI status, verified elsewhere)."""
    return any(policy.require_ci or policy.verified_on for policy in policies)


def gate_policy_clean(fields: dict[str, Any]) -> None:
    """Check a policy's fields in place; InvalidInput naming the field."""
    if "environment" in fields:
        fields["environment"] = str(fields["environment"] or "").strip()
    if "verified_on" in fields:
        fields["verified_on"] = str(fields["verified_on"] or "").strip()
        if fields["verified_on"] and fields["verified_on"] == fields.get("environment"):
            raise InvalidInput(
                "verified_on", "Name another environment than the one this policy guards."
            )
    if "approver_role" in fields and fields["approver_role"] not in APPROVER_ROLES:
        raise InvalidInput("approver_role", f"Choose one of: {', '.join(APPROVER_ROLES)}.")
    if "ci_contexts" in fields:
        contexts = fields["ci_contexts"]
        if not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts):
            raise InvalidInput("ci_contexts", "Give a list of commit status contexts.")
        contexts = [c.strip() for c in contexts if c.strip()]
        if len(contexts) > MAX_CONTEXTS or any(len(c) > MAX_CONTEXT_LENGTH for c in contexts):
            raise InvalidInput(
                "ci_contexts",
                f"At most {MAX_CONTEXTS} contexts of {MAX_CONTEXT_LENGTH} characters each.",
            )
        fields["ci_contexts"] = contexts
    if "max_wait_minutes" in fields and not 1 <= int(fields["max_wait_minutes"]) <= 7 * 24 * 60:
        raise InvalidInput("max_wait_minutes", "Between 1 minute and 7 days (10080).")


# --------------------------------------------------------------------------- the commit


def _is_full_sha(revision: str) -> bool:
    return len(revision) in (40, 64) and all(c in "0123456789abcdef" for c in revision)


def commit_of(project: Project, revision: str) -> str | None:
    """The commit ``revision`` names in the project's repository now: a full SHA as it is, a
    branch or tag through `git ls-remote` (the address policy first); None when it cannot
    be read (the reason is logged)."""
    if _is_full_sha(revision):
        return revision
    try:
        outbound.repository_check(project.repository_url)
        refs = remote_refs(
            project.repository_url,
            ssh_private_key=project.private_key or None,
            https_token=project.repository_token or None,
            allow_local=settings.ALLOW_LOCAL_REPOSITORIES,
            host_key=project.repository_host_key or None,
            timeout=settings.FETCH_TIMEOUT,
        )
    except (EngineError, InvalidInput) as exc:
        logger.info("Refs of %s not read: %s", redact_url(project.repository_url), exc)
        return None
    for ref in (f"refs/heads/{revision}", f"refs/tags/{revision}^{{}}", f"refs/tags/{revision}"):
        if ref in refs:
            return refs[ref]
    return None


def deployment_revision(
    project: Project, revision: str, servers: Sequence[Server], group: ServerGroup | None
) -> str:
    """What a deployment without a revision deploys: the group's branch, else the servers'
    (the first by name, as builds.runner does)."""
    if revision:
        return revision
    if group is not None and group.branch:
        return group.branch
    branches = sorted({server.effective_branch for server in servers})
    return branches[0] if branches else project.branch


# --------------------------------------------------------------------------- commit statuses

#: GitLab pipeline statuses (Pipeline Hook ``object_attributes.status``, the commit statuses
#: API's ``status``) in the commit status vocabulary.
GITLAB_STATES = {
    "created": CommitState.PENDING,
    "waiting_for_resource": CommitState.PENDING,
    "preparing": CommitState.PENDING,
    "pending": CommitState.PENDING,
    "running": CommitState.PENDING,
    "scheduled": CommitState.PENDING,
    "manual": CommitState.PENDING,
    "success": CommitState.SUCCESS,
    "failed": CommitState.FAILURE,
    "canceled": CommitState.ERROR,
    "canceling": CommitState.ERROR,
    "skipped": CommitState.ERROR,
}
#: GitHub's and Gitea's states (Gitea adds "warning", which is not green).
GITHUB_STATES = {
    "pending": CommitState.PENDING,
    "success": CommitState.SUCCESS,
    "failure": CommitState.FAILURE,
    "error": CommitState.ERROR,
    "warning": CommitState.FAILURE,
}


@dataclass(frozen=True)
class StatusReport:
    """One commit status as a Git host reported it, in its common terms."""

    sha: str
    context: str
    state: str
    description: str = ""


def commit_status_record(*, project: Project, reports: Iterable[StatusReport], source: str) -> int:
    """Store each report as its (project, sha, context)'s latest state; return how many.
    A report of a context Slipway itself writes is skipped."""
    stored = 0
    for report in reports:
        if report.context.startswith(OWN_CONTEXT_PREFIX):
            continue
        values = {
            "state": report.state,
            "description": report.description[:255],
            "source": source[:30],
            "updated_at": timezone.now(),
        }
        key: dict[str, Any] = {
            "project": project,
            "sha": report.sha,
            "context": report.context[:255],
        }
        try:
            with transaction.atomic():
                CommitStatus.objects.update_or_create(**key, defaults=values)
        except IntegrityError:
            # Two reports of one context at once: the other inserted it; this one updates.
            CommitStatus.objects.filter(**key).update(**values)
        stored += 1
    return stored


def commit_statuses_fetch(project: Project, sha: str) -> int:
    """Ask the project's enabled GitHub, GitLab and Gitea integrations for ``sha``'s commit
    statuses and store them (commit_status_record); return how many were stored. An API
    that refuses or cannot be reached is logged and skipped (the gate then stays pending).

    GitHub: ``GET /repos/{owner}/{repo}/commits/{ref}/status`` (the combined status; its
    ``statuses`` each have ``context``, ``state``, ``description``). GitLab:
    ``GET /projects/:id/repository/commits/:sha/statuses`` (``name``, ``status``). Gitea:
    ``GET /repos/{owner}/{repo}/commits/{ref}/status`` (as GitHub's).
    """
    stored = 0
    kinds = (IntegrationKind.GITHUB, IntegrationKind.GITLAB, IntegrationKind.GITEA)
    for integration in Integration.objects.filter(project=project, enabled=True, kind__in=kinds):
        try:
            reports = _statuses_from_api(integration, sha)
        except integrations.DeliveryError as exc:
            logger.info("Commit statuses of %s not read from %s: %s", sha[:7], integration, exc)
            continue
        stored += commit_status_record(
            project=project, reports=reports, source=f"api:{integration.kind}"
        )
    return stored


def statuses_fetch_if_missing(project: Project, sha: str, policies: Sequence[GatePolicy]) -> None:
    """Read ``sha``'s statuses from the Git hosts' APIs when a policy has a CI gate and no
    status of that commit is stored yet (no webhook brought one)."""
    if not sha or not any(policy.require_ci for policy in policies):
        return
    if not CommitStatus.objects.filter(project=project, sha=sha).exists():
        commit_statuses_fetch(project, sha)


def _statuses_from_api(integration: Integration, sha: str) -> list[StatusReport]:
    repository = integration.repository
    if integration.kind == IntegrationKind.GITLAB:
        client = integrations.Client(integration, {"PRIVATE-TOKEN": integration.token})
        path = f"/projects/{quote(repository, safe='')}/repository/commits/{sha}/statuses"
        answer = client.request("GET", path, None)
        rows = answer.document if isinstance(answer.document, list) else []
        return [
            StatusReport(
                sha=sha,
                context=str(row.get("name", "")),
                state=GITLAB_STATES.get(str(row.get("status", "")), CommitState.PENDING),
                description=str(row.get("description") or ""),
            )
            for row in rows
            if isinstance(row, dict) and row.get("name")
        ]
    if integration.kind == IntegrationKind.GITHUB:
        auth = {
            "Authorization": f"Bearer {integration.token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": integrations.GITHUB_API_VERSION,
        }
    else:
        auth = {"Authorization": f"token {integration.token}"}
    client = integrations.Client(integration, auth)
    answer = client.request("GET", f"/repos/{repository}/commits/{sha}/status", None)
    document = answer.document if isinstance(answer.document, dict) else {}
    rows = document.get("statuses") or []
    return [
        StatusReport(
            sha=sha,
            context=str(row.get("context", "")),
            state=GITHUB_STATES.get(str(row.get("state") or row.get("status") or ""), "pending"),
            description=str(row.get("description") or ""),
        )
        for row in rows
        if isinstance(row, dict) and row.get("context")
    ]


# --------------------------------------------------------------------------- evaluation


def gates_evaluate(
    *,
    project: Project,
    servers: Sequence[Server],
    group: ServerGroup | None,
    sha: str,
    automatic: bool,
    requester: User | None,
    deployment: Deployment | None = None,
    policies: Sequence[GatePolicy] | None = None,
) -> Checklist:
    """Each policy's gates for a deployment of ``sha`` to ``servers``: a Checklist (empty
    when no policy applies). ``automatic``: a webhook or schedule (a commit not yet verified
    elsewhere is pending, not failed). ``deployment``: the held deployment, whose approvals
    count; None before it exists (approvals then pending)."""
    policies = list(policies if policies is not None else policies_for(project, servers, group))
    checks: list[GateCheck] = []
    for policy in policies:
        env = policy.environment
        if policy.require_ci:
            checks.append(_ci_check(project, env, sha, policy.ci_contexts))
        if policy.verified_on:
            checks.append(_verified_check(project, env, sha, policy.verified_on, automatic))
        if policy.approvals_required:
            checks.append(_approvals_check(project, env, policy, requester, deployment))
        in_env = [s for s in servers if s.environment == env] or list(servers)
        if policy.require_rollback_target:
            missing = [s.name for s in in_env if rollback_target(s) is None]
            checks.append(
                GateCheck(
                    "rollback_target",
                    env,
                    FAILED if missing else PASSED,
                    f"nothing to roll back to on {', '.join(missing)}"
                    if missing
                    else "every server keeps an earlier release",
                )
            )
        if policy.require_health_checks:
            unchecked = [s.name for s in in_env if not _has_health_check(project, s)]
            checks.append(
                GateCheck(
                    "health_checks",
                    env,
                    FAILED if unchecked else PASSED,
                    f"no health check runs on {', '.join(unchecked)}"
                    if unchecked
                    else "every server has a health check",
                )
            )
        if policy.require_notifications:
            enabled = Notification.objects.filter(project=project, enabled=True).exists()
            checks.append(
                GateCheck(
                    "notifications",
                    env,
                    PASSED if enabled else FAILED,
                    "an enabled notification tells people"
                    if enabled
                    else "the project has no enabled notification",
                )
            )
    order = {gate: n for n, gate in enumerate(GATES)}
    checks.sort(key=lambda check: (check.environment, order[check.gate]))
    wait = min((policy.max_wait_minutes for policy in policies), default=60)
    return Checklist(sha=sha, checks=tuple(checks), max_wait_minutes=wait)


def _ci_check(project: Project, env: str, sha: str, contexts: Sequence[str]) -> GateCheck:
    if not sha:
        return GateCheck("ci", env, PENDING, "the revision's commit could not be read yet")
    statuses = {
        row.context: row.state
        for row in CommitStatus.objects.filter(project=project, sha=sha).exclude(
            context__startswith=OWN_CONTEXT_PREFIX
        )
    }
    red = sorted(c for c, state in statuses.items() if state in (CommitState.FAILURE, "error"))
    if red:
        return GateCheck("ci", env, FAILED, f"{', '.join(red)} failed on {sha[:7]}")
    wanted = list(contexts) or sorted(statuses)
    if not wanted:
        return GateCheck("ci", env, PENDING, f"no commit status reported for {sha[:7]} yet")
    waiting = [c for c in wanted if statuses.get(c) != CommitState.SUCCESS]
    if waiting:
        return GateCheck("ci", env, PENDING, f"waiting for {', '.join(waiting)} on {sha[:7]}")
    return GateCheck("ci", env, PASSED, f"{', '.join(wanted)} green on {sha[:7]}")


def _verified_check(
    project: Project, env: str, sha: str, verified_on: str, automatic: bool
) -> GateCheck:
    there = Deployment.objects.filter(
        project=project,
        kind=Kind.DEPLOY,
        targets__server__environment=verified_on,
    )
    if (
        sha
        and there.filter(
            status=Status.SUCCEEDED, end_revision=sha, targets__status=TargetStatus.SUCCEEDED
        ).exists()
    ):
        return GateCheck("verified", env, PASSED, f"{sha[:7]} succeeded on {verified_on}")
    on_its_way = (
        sha
        and there.filter(
            Q(end_revision=sha) | Q(revision=sha),
            status__in=[Status.GATED, Status.QUEUED, Status.RUNNING],
        ).exists()
    )
    detail = f"{sha[:7] or 'the commit'} has not succeeded on {verified_on}"
    if on_its_way:
        return GateCheck(
            "verified", env, PENDING, f"{detail} yet: its deployment there is on its way"
        )
    return GateCheck("verified", env, PENDING if automatic else FAILED, detail)


def approvers_of(
    project: Project, policy: GatePolicy, requester: User | None, deployment: Deployment
) -> list[str]:
    """The usernames whose approvals of ``deployment`` count for ``policy``: members holding
    its approver role (or admin), the requester left out."""
    roles = [Role.ADMIN] if policy.approver_role == Role.ADMIN else list(APPROVER_ROLES)
    members = Membership.objects.filter(project=project, role__in=roles).values("user_id")
    approvals = Approval.objects.filter(deployment=deployment, user_id__in=members)
    if requester is not None:
        approvals = approvals.exclude(user_id=requester.pk)
    return list(approvals.order_by("created_at").values_list("user__username", flat=True))


def _approvals_check(
    project: Project,
    env: str,
    policy: GatePolicy,
    requester: User | None,
    deployment: Deployment | None,
) -> GateCheck:
    needed = policy.approvals_required
    role = "an admin" if policy.approver_role == Role.ADMIN else "a deployer or an admin"
    names = [] if deployment is None else approvers_of(project, policy, requester, deployment)
    if len(names) >= needed:
        return GateCheck("approvals", env, PASSED, f"approved by {', '.join(names)}")
    got = f" (so far: {', '.join(names)})" if names else ""
    return GateCheck(
        "approvals",
        env,
        PENDING,
        f"{len(names)} of {needed} approvals from {role} other than the requester{got}",
    )


def _has_health_check(project: Project, server: Server) -> bool:
    return (
        HealthCheck.objects.filter(project=project)
        .filter(Q(servers__isnull=True) | Q(servers=server))
        .exists()
    )


def checklist_of(deployment: Deployment) -> Checklist | None:
    """The checklist recorded on ``deployment`` (Deployment.gates), or None."""
    stored: Mapping[str, Any] = deployment.gates or {}
    if not stored.get("checks"):
        return None
    checks = tuple(
        GateCheck(
            gate=str(c.get("gate", "")),
            environment=str(c.get("environment", "")),
            state=str(c.get("state", "")),
            detail=str(c.get("detail", "")),
        )
        for c in stored["checks"]
        if c.get("gate") in GATE_LABELS
    )
    return Checklist(sha=str(stored.get("sha", "")), checks=checks, max_wait_minutes=0)
