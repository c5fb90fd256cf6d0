"""Integrations: each deployment reported to the Git host (GitHub commit statuses and
deployments, GitLab deployments, Gitea commit statuses) and to Sentry (a release and a
deploy), with a token kept encrypted per project.

This module knows what each provider's API wants; recording, claiming, sending and retrying
are builds.notifications' (an integration's reports are NotificationDelivery rows, sent by
the same task, retried on the same schedule, listed the same way). Every request goes through
builds.outbound (the outbound-address policy), carries the token in a header only, never
follows a redirect (the token must not travel to another address), and reads at most
RESPONSE_LIMIT bytes of the answer: a created deployment's id, or an error message.

Which reports a deployment makes (docs/integrations.md):

- ``started``: recorded when the commit being deployed is known (the runner's
  ``revision_resolved``), not when the worker claims the deployment, since a status needs
  the commit's SHA. GitHub: commit status ``pending``, a deployment created, its status
  ``in_progress``. GitLab: a deployment created ``running``. Gitea: commit status
  ``pending``. Sentry: nothing yet.
- ``succeeded`` (and a rollback's ``rolled_back``), ``failed``, ``cancelled``: only for a
  deployment whose start was recorded, with the same SHA. GitHub: commit status
  ``success``/``failure``/``error`` and the deployment's status; GitLab: the deployment's
  status ``success``/``failed``/``canceled``; Gitea: commit status; Sentry (success only): the
  release (version = the SHA) and a deploy to the environment.

A finish waits (``DeliveryError.deferred``) while the start of the same deployment is still
being sent: the provider must see them in order, and the finish needs the deployment id the
start was given.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction

from builds import outbound
from builds.engine.errors import InvalidInput
from builds.models import Deployment, Kind
from projects.models import (
    DELIVERY_OPEN,
    INTEGRATION_DEFAULT_BASE_URLS,
    DeliveryEvent,
    DeliveryStatus,
    Integration,
    IntegrationKind,
    NotificationDelivery,
    Project,
)
from projects.services import _project_servers, audit_record, model_update

USER_AGENT = "Slipway-Integrations/1"
#: The REST API version GitHub documents these endpoints under (X-GitHub-Api-Version).
GITHUB_API_VERSION = "2022-11-28"
#: Bytes of an answer read: enough for a deployment's JSON, never a whole page.
RESPONSE_LIMIT = 64 * 1024
#: The longest provider error message kept in a delivery's error.
MESSAGE_LIMIT = 200
#: GitHub refuses a commit status description longer than this.
DESCRIPTION_LIMIT = 140
#: The environment reported when neither the integration nor the servers name one.
DEFAULT_ENVIRONMENT = "production"
#: The commit status context (GitHub, Gitea): one per environment, so that staging and
#: production show as two checks.
CONTEXT_PREFIX = "slipway"
MAX_TOKEN_LENGTH = 1000
# Answers that trying again will not change, except these (rate limits, timeouts).
RETRYABLE_CLIENT_ERRORS = frozenset({408, 425, 429})

INTEGRATION_FIELDS = frozenset(
    {"kind", "base_url", "repository", "environment", "token", "servers", "enabled"}
)
FINISH_EVENTS = (
    DeliveryEvent.SUCCEEDED,
    DeliveryEvent.FAILED,
    DeliveryEvent.CANCELLED,
    DeliveryEvent.ROLLED_BACK,
)


class DeliveryError(Exception):
    """An attempt failed; ``permanent`` when another attempt cannot succeed; ``deferred``
    when it must wait for an earlier delivery (the attempt does not count)."""

    def __init__(
        self,
        message: str,
        *,
        permanent: bool = False,
        status_code: int | None = None,
        deferred: bool = False,
    ) -> None:
        self.message = message
        self.permanent = permanent
        self.status_code = status_code
        self.deferred = deferred
        super().__init__(message)


# --------------------------------------------------------------------------- configuration

_OWNER_REPO = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_GITLAB_PROJECT = re.compile(r"^(?:[0-9]+|[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)+)$")
_SENTRY_PROJECT = re.compile(r"^[A-Za-z0-9_-]+/[A-Za-z0-9_.-]+$")
_ENVIRONMENT = re.compile(r"^[A-Za-z0-9_.-][A-Za-z0-9 _./-]{0,99}$")

REPOSITORY_HELP = {
    IntegrationKind.GITHUB: "owner/repository, as in the repository's GitHub address",
    IntegrationKind.GITLAB: "the project's numeric id, or its path such as group/project",
    IntegrationKind.GITEA: "owner/repository, as in the repository's Gitea address",
    IntegrationKind.SENTRY: "organization/project: the two slugs of the Sentry project",
}
_REPOSITORY_PATTERNS = {
    IntegrationKind.GITHUB: _OWNER_REPO,
    IntegrationKind.GITLAB: _GITLAB_PROJECT,
    IntegrationKind.GITEA: _OWNER_REPO,
    IntegrationKind.SENTRY: _SENTRY_PROJECT,
}


def _clean_base_url(kind: str, value: object) -> str:
    url = str(value or "").strip().rstrip("/")
    if not url:
        default = INTEGRATION_DEFAULT_BASE_URLS.get(kind)
        if default is None:
            raise InvalidInput(
                "base_url", f"is required for {kind}: the API's address, https://host/api/v1."
            )
        return default
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise InvalidInput("base_url", "is the API's root address, without ? or #.")
    scheme = parts.scheme.lower()
    private_allowed = bool(getattr(settings, "ALLOW_PRIVATE_NOTIFICATION_TARGETS", False))
    if scheme != "https" and not (scheme == "http" and private_allowed):
        raise InvalidInput(
            "base_url",
            "must start with https://: the token travels with every request (http:// only "
            f"when the administrator sets {outbound.ALLOW_PRIVATE_SETTING}=true).",
        )
    try:
        outbound.check_url(url)
    except outbound.OutboundError as exc:
        raise InvalidInput("base_url", f"{exc.message}.") from None
    return url


def integration_clean(
    data: Mapping[str, Any], *, instance: Integration | None = None
) -> dict[str, Any]:
    """Check an integration's fields (all of them to create, the changed ones to update).

    Raises InvalidInput naming the first bad field. ``base_url`` blank takes the kind's
    public API (INTEGRATION_DEFAULT_BASE_URLS; Gitea has none); it must be https:// (http://
    only with SLIPWAY_ALLOW_PRIVATE_NOTIFICATION_TARGETS) and pass the outbound-address
    policy now, and again at every send. ``repository`` follows the kind's form
    (REPOSITORY_HELP). ``servers`` passes through unchecked (the service checks them).
    """
    unknown = set(data) - INTEGRATION_FIELDS
    if unknown:
        raise InvalidInput(sorted(unknown)[0], "cannot be set on an integration.")
    cleaned = dict(data)
    kinds = ", ".join(IntegrationKind.values)
    if instance is None and "kind" not in cleaned:
        raise InvalidInput("kind", f"is required: one of {kinds}.")
    kind = cleaned.get("kind", instance.kind if instance is not None else "")
    if kind not in IntegrationKind.values:
        raise InvalidInput("kind", f"must be one of {kinds}.")
    kind_changed = instance is None or kind != instance.kind
    if "base_url" in cleaned or kind_changed:
        kept = instance.base_url if instance is not None and not kind_changed else ""
        cleaned["base_url"] = _clean_base_url(kind, cleaned.get("base_url", kept))
    if (
        instance is not None
        and cleaned.get("base_url", instance.base_url) != instance.base_url
        and "token" not in cleaned
    ):
        # The stored token is write-only: kept as it is, it would go to the new address, and
        # whoever may edit the integration could read it there.
        raise InvalidInput(
            "token",
            "give the token again to change the API's address: the stored one is sent only "
            "where it was given for.",
        )
    if "repository" in cleaned or kind_changed:
        kept = instance.repository if instance is not None else ""
        repository = str(cleaned.get("repository", kept) or "").strip().strip("/")
        if not _REPOSITORY_PATTERNS[kind].match(repository):
            raise InvalidInput("repository", f"must be {REPOSITORY_HELP[kind]}.")
        cleaned["repository"] = repository
    if "environment" in cleaned:
        environment = str(cleaned["environment"] or "").strip()
        if environment and not _ENVIRONMENT.match(environment):
            raise InvalidInput(
                "environment",
                "is a name of up to 100 letters, digits, spaces and . _ - /; blank for the "
                "servers' environment.",
            )
        cleaned["environment"] = environment
    if "token" in cleaned or instance is None:
        token = cleaned.get("token")
        if not isinstance(token, str) or not token.strip():
            raise InvalidInput("token", f"is required: an API token {kind} accepts.")
        if len(token) > MAX_TOKEN_LENGTH or any(c.isspace() for c in token.strip()):
            raise InvalidInput(
                "token", f"must be one word of at most {MAX_TOKEN_LENGTH} characters."
            )
        cleaned["token"] = token.strip()
    if "enabled" in cleaned and not isinstance(cleaned["enabled"], bool):
        raise InvalidInput("enabled", "must be true or false.")
    return cleaned


# --------------------------------------------------------------------------- services


def servers_of(project: Project, cleaned: dict[str, Any]) -> list[Any] | None:
    """Take ``servers`` out of a notification's or an integration's cleaned fields: None when
    not given, else the servers, each checked to be ``project``'s (InvalidInput otherwise)."""
    if "servers" not in cleaned:
        return None
    servers = cleaned.pop("servers")
    if not isinstance(servers, list | tuple):
        raise InvalidInput("servers", "must be a list of servers.")
    return _project_servers(project, list(servers))


def integration_create(*, project: Project, actor: User | None, **fields: Any) -> Integration:
    """Add an integration to ``project``; the audit log names the fields, never the token."""
    cleaned = integration_clean(fields)
    servers = servers_of(project, cleaned)
    with transaction.atomic():
        integration = Integration.objects.create(project=project, **cleaned)
        if servers is not None:
            integration.servers.set(servers)
        audit_record(
            project=project,
            actor=actor,
            action="integration.created",
            target=f"integration {integration}",
            integration=integration.pk,
            kind=integration.kind,
            fields=sorted(fields),
        )
    return integration


def integration_update(
    *, integration: Integration, actor: User | None, **fields: Any
) -> Integration:
    """Change an integration's fields; a token not given stays as it is."""
    cleaned = integration_clean(fields, instance=integration)
    servers = servers_of(integration.project, cleaned)
    with transaction.atomic():
        changed = model_update(instance=integration, data=cleaned)
        if servers is not None:
            integration.servers.set(servers)
            changed.append("servers")
        if changed:
            audit_record(
                project=integration.project,
                actor=actor,
                action="integration.updated",
                target=f"integration {integration}",
                integration=integration.pk,
                fields=sorted(changed),
            )
    return integration


def integration_delete(*, integration: Integration, actor: User | None) -> None:
    with transaction.atomic():
        audit_record(
            project=integration.project,
            actor=actor,
            action="integration.deleted",
            target=f"integration {integration}",
            integration=integration.pk,
        )
        integration.delete()


# --------------------------------------------------------------------------- recording


def wants(integration: Integration, event: str, deployment: Deployment) -> bool:
    """Whether ``integration`` reports ``event`` of ``deployment`` at all.

    A rollback's success comes as ``rolled_back`` (a success of that deployment); the
    ``rolled_back`` that follows a failed deployment adds nothing to its failure. Sentry
    hears only of successes: a deploy is a release that reached an environment.
    """
    if event == DeliveryEvent.ROLLED_BACK and deployment.kind != Kind.ROLLBACK:
        return False
    if integration.kind == IntegrationKind.SENTRY:
        return event in (DeliveryEvent.SUCCEEDED, DeliveryEvent.ROLLED_BACK)
    return event in (DeliveryEvent.STARTED, *FINISH_EVENTS)


def environment_for(integration: Integration, deployment: Deployment) -> str:
    """The environment reported: the integration's, else the one environment all of the
    deployment's servers share, else DEFAULT_ENVIRONMENT."""
    if integration.environment:
        return integration.environment
    environments = set(deployment.targets.values_list("server__environment", flat=True))
    if len(environments) == 1 and (only := environments.pop()):
        return str(only)
    return DEFAULT_ENVIRONMENT


def ref_for(deployment: Deployment, sha: str) -> str:
    """The branch or tag deployed, as GitLab's ``ref`` wants it: the deployment's branch,
    else the ref it was asked for, else (a deployment of the head) the branch its servers
    follow, as the runner chose it; the SHA when nothing names one."""
    if deployment.branch:
        return deployment.branch
    if deployment.revision:
        return deployment.revision
    branches = sorted(
        {target.server.effective_branch for target in deployment.targets.select_related("server")}
    )
    return branches[0] if branches else sha


# --------------------------------------------------------------------------- sending


@dataclass(frozen=True)
class Report:
    """What one delivery tells a provider, taken from its frozen payload."""

    event: str
    #: success, failure, cancelled or started
    outcome: str
    sha: str
    ref: str
    environment: str
    deployment_id: int
    log_url: str
    description: str
    finished_at: str | None
    started_at: str | None


_OUTCOMES = {
    DeliveryEvent.STARTED: "started",
    DeliveryEvent.SUCCEEDED: "success",
    DeliveryEvent.ROLLED_BACK: "success",
    DeliveryEvent.FAILED: "failure",
    DeliveryEvent.CANCELLED: "cancelled",
}
_WORDS = {
    "started": "started",
    "success": "succeeded",
    "failure": "failed",
    "cancelled": "was cancelled",
}


def report_of(delivery: NotificationDelivery) -> Report:
    payload = delivery.payload
    deployment = payload["deployment"]
    outcome = _OUTCOMES[DeliveryEvent(delivery.event)]
    environment = payload["integration"]["environment"]
    noun = "Rollback" if deployment["kind"] == Kind.ROLLBACK else "Deployment"
    description = f"{noun} #{deployment['id']} to {environment} {_WORDS[outcome]}"
    if len(description) > DESCRIPTION_LIMIT:
        description = description[: DESCRIPTION_LIMIT - 1] + "…"
    return Report(
        event=delivery.event,
        outcome=outcome,
        sha=payload["integration"]["sha"],
        ref=payload["integration"]["ref"],
        environment=environment,
        deployment_id=int(deployment["id"]),
        log_url=deployment["html_url"],
        description=description,
        finished_at=deployment["finished_at"],
        started_at=deployment["started_at"],
    )


@dataclass(frozen=True)
class Answer:
    status_code: int
    document: Any


class Client:
    """Requests to one integration's API: the base URL joined with a path, the token in the
    kind's header, JSON both ways. Errors are DeliveryErrors without the token."""

    def __init__(self, integration: Integration, auth: Mapping[str, str]) -> None:
        self.integration = integration
        self.base_url = integration.base_url.rstrip("/")
        self.token = integration.token
        self.headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
            **auth,
        }

    def request(self, method: str, path: str, document: Mapping[str, Any] | None) -> Answer:
        """Send ``document`` as JSON (None: no body, for a GET); the answer, or DeliveryError."""
        body = b"" if document is None else json.dumps(document, separators=(",", ":")).encode()
        try:
            response = outbound.send(
                method,
                self.base_url + path,
                body,
                self.headers,
                follow_redirects=False,
                read_limit=RESPONSE_LIMIT,
            )
        except outbound.OutboundError as exc:
            raise DeliveryError(self._safe(exc.message), permanent=exc.permanent) from None
        try:
            parsed: Any = json.loads(response.body) if response.body else None
        except ValueError:
            parsed = None
        code = response.status_code
        if 200 <= code < 300:
            return Answer(code, parsed)
        if 300 <= code < 400:
            raise DeliveryError(
                f"{response.origin} answered {method} {self._path(path)} with a redirect "
                f"(HTTP {code}); give the API's final address as the base URL",
                status_code=code,
                permanent=True,
            )
        message = _message_of(parsed)
        raise DeliveryError(
            f"{response.origin} answered {method} {self._path(path)} with HTTP {code}"
            + (f": {self._safe(message)}" if message else ""),
            status_code=code,
            permanent=400 <= code < 500 and code not in RETRYABLE_CLIENT_ERRORS,
        )

    def _path(self, path: str) -> str:
        return urlsplit(self.base_url).path + path

    def _safe(self, text: str) -> str:
        """``text`` clipped, with the token masked should a provider repeat it, as it is,
        JSON-escaped (an error document of fields is kept as JSON) or URL-encoded."""
        text = " ".join(text.split())
        if self.token:
            forms = {
                self.token,
                json.dumps(self.token)[1:-1],
                json.dumps(self.token, ensure_ascii=False)[1:-1],
                quote(self.token, safe=""),
            }
            for form in sorted(forms, key=len, reverse=True):
                text = text.replace(form, "****")
        return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "…"


def _message_of(document: Any) -> str:
    """The error message of a provider's JSON answer: ``message`` (GitHub, GitLab, Gitea),
    ``error`` (GitLab), ``detail`` (Sentry); a field's errors when that is all there is."""
    if isinstance(document, dict):
        for key in ("message", "error", "detail"):
            value = document.get(key)
            if isinstance(value, str) and value:
                return value
            if isinstance(value, dict | list) and value:
                return json.dumps(value, ensure_ascii=False)
        if document:
            return json.dumps(document, ensure_ascii=False)
    return ""


def _id_of(answer: Answer, what: str, client: Client) -> str:
    document = answer.document
    identifier = document.get("id") if isinstance(document, dict) else None
    if not isinstance(identifier, int | str) or isinstance(identifier, bool) or not identifier:
        raise DeliveryError(
            f"{client.integration.destination} did not give the new {what} an id "
            f"(HTTP {answer.status_code}): {client._safe(_message_of(document))}",
            status_code=answer.status_code,
            permanent=True,
        )
    return str(identifier)


def _owner_repo(repository: str) -> str:
    owner, name = repository.split("/", 1)
    return f"{quote(owner, safe='')}/{quote(name, safe='')}"


def _earlier_deployment_id(delivery: NotificationDelivery) -> str:
    """The provider's deployment id the start of this deployment was given, "" when there is
    none to use. DeliveryError(deferred) while that start is still being sent."""
    if delivery.integration_id is None or delivery.deployment_id is None:
        return ""
    started = (
        NotificationDelivery.objects.filter(
            integration_id=delivery.integration_id,
            deployment_id=delivery.deployment_id,
            event=DeliveryEvent.STARTED,
        )
        .exclude(pk=delivery.pk)
        .values("status", "remote_id")
        .first()
    )
    if started is None:
        return ""
    if started["status"] in DELIVERY_OPEN:
        raise DeliveryError(
            "Waiting for this deployment's start to be reported first", deferred=True
        )
    return str(started["remote_id"])


def _wait_for_start(delivery: NotificationDelivery) -> None:
    if delivery.event != DeliveryEvent.STARTED:
        _earlier_deployment_id(delivery)


def _remember(delivery: NotificationDelivery, remote_id: str) -> None:
    # At once, not with the outcome: a retry after a later step failed must not create a
    # second deployment.
    NotificationDelivery.objects.filter(pk=delivery.pk).update(remote_id=remote_id)
    delivery.remote_id = remote_id


def _context(report: Report) -> str:
    return f"{CONTEXT_PREFIX}/{report.environment}"


# GitHub: https://docs.github.com/en/rest/commits/statuses#create-a-commit-status and
# https://docs.github.com/en/rest/deployments/deployments#create-a-deployment,
# .../deployments/statuses#create-a-deployment-status
_GITHUB_COMMIT_STATES = {
    "started": "pending",
    "success": "success",
    "failure": "failure",
    "cancelled": "error",
}
_GITHUB_DEPLOYMENT_STATES = {
    "started": "in_progress",
    "success": "success",
    "failure": "failure",
    "cancelled": "error",
}


def _send_github(integration: Integration, delivery: NotificationDelivery) -> int:
    report = report_of(delivery)
    client = Client(
        integration,
        {
            "Authorization": f"Bearer {integration.token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": GITHUB_API_VERSION,
        },
    )
    repo = f"/repos/{_owner_repo(integration.repository)}"
    deployment_id = delivery.remote_id
    if report.event != DeliveryEvent.STARTED and not deployment_id:
        deployment_id = _earlier_deployment_id(delivery)
    answer = client.request(
        "POST",
        f"{repo}/statuses/{report.sha}",
        {
            "state": _GITHUB_COMMIT_STATES[report.outcome],
            "target_url": report.log_url,
            "description": report.description,
            "context": _context(report),
        },
    )
    if not deployment_id:
        created = client.request(
            "POST",
            f"{repo}/deployments",
            {
                "ref": report.sha,
                "environment": report.environment,
                "description": report.description,
                "auto_merge": False,
                # The commit's checks are not Slipway's to wait for: it deploys what it was
                # asked to deploy.
                "required_contexts": [],
                "production_environment": report.environment == DEFAULT_ENVIRONMENT,
            },
        )
        if created.status_code != 201:
            # 202: GitHub merged the default branch into the ref instead (auto_merge is off,
            # so this should not happen); there is no deployment to report on.
            raise DeliveryError(
                f"{integration.destination} did not create the deployment "
                f"(HTTP {created.status_code}): {client._safe(_message_of(created.document))}",
                status_code=created.status_code,
                permanent=True,
            )
        deployment_id = _id_of(created, "deployment", client)
        _remember(delivery, deployment_id)
    answer = client.request(
        "POST",
        f"{repo}/deployments/{quote(deployment_id, safe='')}/statuses",
        {
            "state": _GITHUB_DEPLOYMENT_STATES[report.outcome],
            "log_url": report.log_url,
            "description": report.description,
            "environment": report.environment,
        },
    )
    return answer.status_code


# GitLab: https://docs.gitlab.com/api/deployments/ (create, update a deployment).
_GITLAB_STATUSES = {
    "started": "running",
    "success": "success",
    "failure": "failed",
    "cancelled": "canceled",
}


def _gitlab_project(repository: str) -> str:
    # A numeric id, or the URL-encoded path ("group/project" → "group%2Fproject").
    return quote(repository, safe="")


def _send_gitlab(integration: Integration, delivery: NotificationDelivery) -> int:
    report = report_of(delivery)
    client = Client(integration, {"PRIVATE-TOKEN": integration.token})
    project = f"/projects/{_gitlab_project(integration.repository)}"
    status = _GITLAB_STATUSES[report.outcome]
    deployment_id = delivery.remote_id
    if report.event != DeliveryEvent.STARTED and not deployment_id:
        deployment_id = _earlier_deployment_id(delivery)
    if deployment_id:
        answer = client.request(
            "PUT", f"{project}/deployments/{quote(deployment_id, safe='')}", {"status": status}
        )
        return answer.status_code
    created = client.request(
        "POST",
        f"{project}/deployments",
        {
            "environment": report.environment,
            "sha": report.sha,
            "ref": report.ref,
            "tag": False,
            "status": status,
        },
    )
    _remember(delivery, _id_of(created, "deployment", client))
    return created.status_code


# Gitea: https://gitea.com/api/swagger#/repository/repoCreateStatus
_GITEA_STATES = {
    "started": "pending",
    "success": "success",
    "failure": "failure",
    "cancelled": "error",
}


def _send_gitea(integration: Integration, delivery: NotificationDelivery) -> int:
    report = report_of(delivery)
    _wait_for_start(delivery)
    client = Client(integration, {"Authorization": f"token {integration.token}"})
    answer = client.request(
        "POST",
        f"/repos/{_owner_repo(integration.repository)}/statuses/{report.sha}",
        {
            "state": _GITEA_STATES[report.outcome],
            "target_url": report.log_url,
            "description": report.description,
            "context": _context(report),
        },
    )
    return answer.status_code


# Sentry: https://docs.sentry.io/api/releases/create-a-new-release-for-an-organization/ and
# https://docs.sentry.io/api/releases/create-a-deploy/
def _send_sentry(integration: Integration, delivery: NotificationDelivery) -> int:
    report = report_of(delivery)
    client = Client(integration, {"Authorization": f"Bearer {integration.token}"})
    organization, project = integration.repository.split("/", 1)
    releases = f"/api/0/organizations/{quote(organization, safe='')}/releases/"
    # Creating a release that exists answers 208 and changes nothing: safe to repeat.
    client.request("POST", releases, {"version": report.sha, "projects": [project]})
    deploy: dict[str, Any] = {
        "environment": report.environment,
        "name": f"Slipway #{report.deployment_id}",
        "url": report.log_url,
        "projects": [project],
    }
    if report.started_at:
        deploy["dateStarted"] = report.started_at
    if report.finished_at:
        deploy["dateFinished"] = report.finished_at
    answer = client.request("POST", f"{releases}{quote(report.sha, safe='')}/deploys/", deploy)
    return answer.status_code


SENDERS: dict[str, Callable[[Integration, NotificationDelivery], int]] = {
    IntegrationKind.GITHUB: _send_github,
    IntegrationKind.GITLAB: _send_gitlab,
    IntegrationKind.GITEA: _send_gitea,
    IntegrationKind.SENTRY: _send_sentry,
}


def send(integration: Integration, delivery: NotificationDelivery) -> int:
    """Report ``delivery`` to ``integration``'s provider; the last answer's status code.

    Raises DeliveryError: ``deferred`` while an earlier report of the same deployment is
    still being sent, ``permanent`` for an answer no retry changes (a 4xx but 408, 425, 429;
    a refused address; a redirect). Messages hold the API's origin and the provider's own
    message, clipped to MESSAGE_LIMIT, never the token.
    """
    if delivery.status != DeliveryStatus.SENDING:
        raise RuntimeError("claim the delivery before sending it")
    return SENDERS[integration.kind](integration, delivery)
