"""The webhook endpoint: one URL per project that GitHub, GitLab, Bitbucket Cloud, Gitea,
Forgejo and DeployHQ-style custom JSON all post to.

The view reads the raw body (bounded), checks the credentials over those exact bytes, and only
then parses; the delivery is recorded (builds.webhook_services) and answered 202 at once, and a
worker decides what to deploy after the answer. Nothing here touches Git, the network or the
project's servers, so a delivery is answered in milliseconds.

Whether a credential is required depends on the project alone, never on which provider the
headers look like: a project with a webhook secret accepts a request only when it carries at
least one credential and every credential it carries matches (see ``authenticate``). Provider
detection only chooses how the body is parsed and which header a refusal names.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import parse_qs

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from builds import gates, webhook_services
from builds.models import WebhookOutcome, WebhookProvider
from builds.webhook_services import RefPush
from deployer.textinput import data_problem
from projects.models import Project

MAX_BODY_BYTES = 1024 * 1024
# What we keep of a delivery: a few commit subjects, shortened.
MAX_SUBJECTS = 20
MAX_SUBJECT_LENGTH = 200

ZERO_SHA = re.compile(r"0+")
# SHA-1 repositories send 40 hex digits, SHA-256 ones 64.
FULL_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
# DeployHQ's custom JSON may name a commit by an abbreviated SHA.
ANY_SHA = re.compile(r"[0-9a-f]{7,40}|[0-9a-f]{64}")


@dataclass(frozen=True)
class _Scheme:
    """How one provider names its headers."""

    provider: str
    # Any of these headers present means this provider.
    detected_by: tuple[str, ...]
    event: tuple[str, ...]
    delivery: tuple[str, ...]
    # The credential header a refusal names when none was sent (GitLab: the secret itself).
    signature: str


# In detection order: Gitea and Forgejo also send GitHub's headers (and Forgejo Gitea's), so
# they come first. A request with none of these headers is custom JSON.
_SCHEMES = (
    _Scheme(
        WebhookProvider.FORGEJO,
        detected_by=("X-Forgejo-Signature", "X-Forgejo-Event"),
        event=("X-Forgejo-Event", "X-Gitea-Event", "X-GitHub-Event"),
        delivery=("X-Forgejo-Delivery", "X-Gitea-Delivery"),
        signature="X-Forgejo-Signature",
    ),
    _Scheme(
        WebhookProvider.GITEA,
        detected_by=("X-Gitea-Signature", "X-Gitea-Event"),
        event=("X-Gitea-Event", "X-GitHub-Event"),
        delivery=("X-Gitea-Delivery", "X-GitHub-Delivery"),
        signature="X-Gitea-Signature",
    ),
    _Scheme(
        WebhookProvider.GITHUB,
        detected_by=("X-GitHub-Event", "X-Hub-Signature-256"),
        event=("X-GitHub-Event",),
        delivery=("X-GitHub-Delivery",),
        signature="X-Hub-Signature-256",
    ),
    _Scheme(
        WebhookProvider.GITLAB,
        detected_by=("X-Gitlab-Event", "X-Gitlab-Token"),
        event=("X-Gitlab-Event",),
        # Idempotency-Key stays the same when GitLab retries; the event UUID is older.
        delivery=("Idempotency-Key", "X-Gitlab-Event-UUID"),
        signature="X-Gitlab-Token",
    ),
    _Scheme(
        WebhookProvider.BITBUCKET,
        detected_by=("X-Event-Key", "X-Hub-Signature"),
        event=("X-Event-Key",),
        delivery=("X-Request-UUID",),
        signature="X-Hub-Signature",
    ),
)
_SCHEME_OF = {
    **{scheme.provider: scheme for scheme in _SCHEMES},
    WebhookProvider.CUSTOM.value: _Scheme(
        WebhookProvider.CUSTOM,
        detected_by=(),
        event=(),
        delivery=("X-Delivery-Id",),
        signature="X-Slipway-Token (or X-Slipway-Signature)",
    ),
}

# Every header that can carry a credential, whoever sends it: HMAC signatures of the raw body
# with the accepted prefixes ("" = bare hex), and tokens that hold the secret itself. Gitea
# and Forgejo send GitHub's and Gogs' copies too; GitHub and Gitea send a legacy SHA-1
# X-Hub-Signature beside the SHA-256 one, Bitbucket Cloud a SHA-256 one.
_SIGNATURE_HEADERS: dict[str, tuple[str, ...]] = {
    "X-Hub-Signature-256": ("sha256=",),
    "X-Hub-Signature": ("sha256=", "sha1="),
    "X-Gitea-Signature": ("",),
    "X-Gogs-Signature": ("",),
    "X-Forgejo-Signature": ("",),
    "X-Slipway-Signature": ("sha256=",),
}
_TOKEN_HEADERS = ("X-Gitlab-Token", "X-Slipway-Token")
_DIGESTS = {"sha256=": hashlib.sha256, "sha1=": hashlib.sha1, "": hashlib.sha256}


@dataclass(frozen=True)
class InboundDelivery:
    provider: str
    event: str
    delivery_id: str
    pushes: tuple[RefPush, ...] = ()
    # Set when the event is not a push (a ping, an issue...): recorded, nothing deployed.
    ignored_reason: str = ""
    summary: list[str] = field(default_factory=list)
    # SHA-256 of the raw body when it identifies the delivery (signed, or from a Git host):
    # the same body under a new delivery id is a replay. "" for bearer-token custom JSON.
    body_digest: str = ""
    # A commit status event (GitHub and Gitea "status", GitLab "Pipeline Hook"): what the
    # CI gate stores (builds.gates); such a delivery has no pushes.
    statuses: tuple[gates.StatusReport, ...] = ()


class Rejected(Exception):
    """The request is refused with ``status``; ``reason`` is safe to show the sender."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(reason)


# --------------------------------------------------------------------------- the view


@csrf_exempt
@require_POST
def receive(request: HttpRequest, token: str) -> JsonResponse:
    """POST /hooks/<token>/ through Django (the test client, a WSGI server). Under ASGI
    (`manage.py serve`) builds.webhook_door answers the same requests with the same answer()."""
    status, payload = answer(
        token=token,
        headers=request.headers,
        read=lambda: read_body(request),
        content_type=request.content_type or "",
    )
    return JsonResponse(payload, status=status)


def answer(
    *, token: str, headers: Mapping[str, str], read: Callable[[], bytes], content_type: str
) -> tuple[int, dict[str, Any]]:
    """Answer one delivery to the project whose webhook token is ``token``: (HTTP status,
    JSON body). 404 for an unknown token; 401, 400 or 413 for a refused request (recorded,
    with the reason); 202 for an accepted delivery (recorded and queued for a worker); 200 for
    one that is final already (ignored, duplicate).

    ``headers`` is case-insensitive (Django's request.headers, or the ASGI door's mapping);
    ``read`` returns the raw body and raises Rejected(413) above MAX_BODY_BYTES; the media
    type of Content-Type without its parameters. Database errors are raised to the caller
    (503 for deployer.db.UNAVAILABLE_ERRORS).
    """
    # Only what the door needs: the project's other secrets (its private key...) stay
    # encrypted, undecrypted, in the database.
    project = Project.objects.only("pk", "webhook_secret").filter(webhook_token=token).first()
    if project is None:
        return 404, {"status": "not_found"}
    provider = detect_provider(headers)
    event = event_of(provider, headers)
    delivery_id = delivery_id_of(provider, headers)
    try:
        body = read()
        credential = authenticate(provider, headers, body, secret=project.webhook_secret)
        inbound = parse(provider, event, delivery_id, body, content_type)
        if credential == SIGNED or provider != WebhookProvider.CUSTOM:
            inbound = replace(inbound, body_digest=hashlib.sha256(body).hexdigest())
    except Rejected as rejected:
        webhook_services.webhook_reject(
            project=project,
            provider=provider,
            event=event,
            delivery_id=delivery_id,
            reason=rejected.reason,
        )
        return rejected.status, {"status": WebhookOutcome.REJECTED, "reason": rejected.reason}
    record = webhook_services.webhook_receive(project=project, inbound=inbound)
    # Accepted: recorded, processed by a worker after this answer (202). Ignored and duplicate
    # deliveries are final already (200). Neither has deployments yet: they come from the
    # processing, shown with the delivery on the project's page.
    return 202 if record.outcome == WebhookOutcome.ACCEPTED else 200, {
        "status": record.outcome,
        "delivery": record.pk,
        "deployments": [],
        "reason": record.reason,
    }


# --------------------------------------------------------------------------- request checks


def read_body(request: HttpRequest) -> bytes:
    """The raw body, refused with 413 above MAX_BODY_BYTES.

    The declared Content-Length is checked before reading anything, and the bytes actually
    read are counted too (a chunked request declares no length). Reading the stream directly,
    not ``request.body``, keeps DATA_UPLOAD_MAX_MEMORY_SIZE from answering 400 first.
    """
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > MAX_BODY_BYTES:
        raise Rejected(413, f"The body is larger than {MAX_BODY_BYTES} bytes")
    body = request.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        raise Rejected(413, f"The body is larger than {MAX_BODY_BYTES} bytes")
    return body


def detect_provider(headers: Mapping[str, str]) -> str:
    for scheme in _SCHEMES:
        if any(name in headers for name in scheme.detected_by):
            return scheme.provider
    return WebhookProvider.CUSTOM


def event_of(provider: str, headers: Mapping[str, str]) -> str:
    names = _SCHEME_OF[provider].event
    return _first_header(headers, names)[:100] if names else "push"


def delivery_id_of(provider: str, headers: Mapping[str, str]) -> str:
    return _first_header(headers, _SCHEME_OF[provider].delivery)[:255]


def _first_header(headers: Mapping[str, str], names: tuple[str, ...]) -> str:
    for name in names:
        value = headers.get(name, "").strip()
        if value:
            return value
    return ""


# What authenticated a request (authenticate's answer).
SIGNED = "signed"  # an HMAC of the body: the body itself is vouched for
BEARER = "bearer"  # the secret itself in a header (GitLab, X-Slipway-Token)
URL_ONLY = "url"  # custom JSON to a project without a secret


def authenticate(provider: str, headers: Mapping[str, str], body: bytes, *, secret: str) -> str:
    """Check the request's credentials over the raw body; fail closed. Returns SIGNED, BEARER
    or URL_ONLY; raises Rejected (401) otherwise.

    With a secret, every credential header present (_SIGNATURE_HEADERS, _TOKEN_HEADERS),
    whichever provider it belongs to, must match, and at least one must be present: leaving a
    header out, or sending another provider's headers, cannot skip the check. Without a
    secret only custom JSON is accepted, authenticated by the URL token (DeployHQ's rule).
    """
    present = [name for name in (*_SIGNATURE_HEADERS, *_TOKEN_HEADERS) if name in headers]
    if not secret:
        if provider == WebhookProvider.CUSTOM and not present:
            return URL_ONLY
        raise Rejected(401, "The project has no webhook secret: deliveries cannot be verified")
    if not present:
        name = _SCHEME_OF[provider].signature
        raise Rejected(401, f"{name} is missing: set the webhook's secret")
    signed = False
    for name in present:
        sent = headers.get(name, "").strip()
        if name in _TOKEN_HEADERS:
            matches = _same(sent, secret)
        else:
            matches = _signature_matches(sent, _SIGNATURE_HEADERS[name], secret, body)
            signed = signed or matches
        if not matches:
            raise Rejected(401, f"{name} does not match the project's webhook secret")
    return SIGNED if signed else BEARER


def _signature_matches(sent: str, prefixes: tuple[str, ...], secret: str, body: bytes) -> bool:
    sent = sent.lower()
    for prefix in prefixes:
        if prefix and not sent.startswith(prefix):
            continue
        digest = hmac.new(secret.encode(), body, _DIGESTS[prefix]).hexdigest()
        return _same(sent, prefix + digest)
    return False


def _same(sent: str, expected: str) -> bool:
    # compare_digest on str refuses non-ASCII; a header may hold anything.
    return hmac.compare_digest(sent.encode("utf-8", "replace"), expected.encode())


# --------------------------------------------------------------------------- parsing


def parse(
    provider: str, event: str, delivery_id: str, body: bytes, content_type: str
) -> InboundDelivery:
    """Turn an authenticated body into an InboundDelivery; malformed input is a 400."""
    data = _decode(provider, body, content_type)
    statuses = _commit_statuses(provider, event, data)
    if statuses:
        return InboundDelivery(
            provider=provider, event=event, delivery_id=delivery_id, statuses=statuses
        )
    parser = _PARSERS[provider]
    pushes_or_reason = parser(event, data)
    if isinstance(pushes_or_reason, str):
        return InboundDelivery(
            provider=provider,
            event=event,
            delivery_id=delivery_id,
            ignored_reason=pushes_or_reason,
        )
    subjects = [subject for push in pushes_or_reason for subject in push.subjects]
    return InboundDelivery(
        provider=provider,
        event=event,
        delivery_id=delivery_id,
        pushes=tuple(pushes_or_reason),
        summary=subjects[:MAX_SUBJECTS],
    )


def _decode(provider: str, body: bytes, content_type: str) -> dict[str, Any]:
    raw: bytes | str = body
    github_like = (WebhookProvider.GITHUB, WebhookProvider.GITEA, WebhookProvider.FORGEJO)
    if content_type == "application/x-www-form-urlencoded" and provider in github_like:
        # GitHub (and Gitea copying it) can send the JSON as the form field "payload".
        try:
            fields = parse_qs(body.decode("utf-8"), strict_parsing=True)
        except (UnicodeDecodeError, ValueError) as error:
            raise Rejected(400, "The form body cannot be read") from error
        if len(fields.get("payload", [])) != 1:
            raise Rejected(400, "The form body has no payload field")
        raw = fields["payload"][0]
    try:
        data = json.loads(raw)
        # The body's size is bounded already (MAX_BODY_BYTES): only what cannot be stored.
        problem = data_problem(data, max_length=None)
    except (UnicodeDecodeError, ValueError) as error:
        raise Rejected(400, "The body is not JSON") from error
    except RecursionError:
        raise Rejected(400, "The body nests arrays or objects too deeply") from None
    if not isinstance(data, dict):
        raise Rejected(400, "The body is not a JSON object")
    if problem is not None:
        # NUL and lone surrogates cannot be stored (PostgreSQL refuses them in text).
        raise Rejected(400, f"The body's field {problem[0]!r} {problem[1]}")
    return data


ParseResult = list[RefPush] | str


def _not_a_push(event: str) -> str:
    if event in ("ping", "diagnostics:ping"):
        return "Ping: the webhook reaches Slipway"
    return f"Event {event or '(none)'} deploys nothing"


def _github(event: str, data: dict[str, Any]) -> ParseResult:
    """GitHub, Gitea and Forgejo: the same push payload (ref, before, after, head_commit)."""
    if event != "push":
        return _not_a_push(event)
    ref = _text(data, "ref")
    after = _text(data, "after").lower()
    commits = _list(data, "commits")
    head_commit = data.get("head_commit") or _commit_with_id(commits, after) or {}
    deleted = bool(data.get("deleted")) or bool(ZERO_SHA.fullmatch(after))
    # GitHub's pusher is {name (the login), email}; Gitea's and Forgejo's a user object
    # {login, username, email}. The sender is the login either way.
    pusher, sender = _object(data, "pusher"), _object(data, "sender")
    return [
        _ref_push(
            ref,
            head="" if deleted else after,
            deleted=deleted,
            message=_message(head_commit),
            subjects=_subjects(commits),
            pusher_email=_optional_text(pusher, "email"),
            pusher=_optional_text(sender, "login")
            or _optional_text(pusher, "login")
            or _optional_text(pusher, "username")
            or _optional_text(pusher, "name"),
        )
    ]


def _gitlab(event: str, data: dict[str, Any]) -> ParseResult:
    # GitLab's "Test" button for push events sends a real push-shaped Push Hook.
    if event not in ("Push Hook", "Tag Push Hook"):
        return _not_a_push(event)
    ref = _text(data, "ref")
    after = _text(data, "after").lower()
    commits = _list(data, "commits")
    deleted = bool(ZERO_SHA.fullmatch(after))
    # Commits are listed oldest first; find the head by its id, else take the last one.
    head_commit = _commit_with_id(commits, after) or (commits[-1] if commits else {})
    # GitLab sends "" or "[REDACTED]" for a user who keeps their email private.
    email = _optional_text(data, "user_email")
    return [
        _ref_push(
            ref,
            head="" if deleted else after,
            deleted=deleted,
            message=_message(head_commit),
            subjects=_subjects(commits),
            pusher_email=email if "@" in email else "",
            pusher=_optional_text(data, "user_username"),
        )
    ]


def _bitbucket(event: str, data: dict[str, Any]) -> ParseResult:
    if event != "repo:push":
        return _not_a_push(event)
    push = data.get("push")
    if not isinstance(push, dict):
        raise Rejected(400, "The payload has no push object")
    actor = _object(data, "actor")
    # Bitbucket's actor has no email: a [deploy: name] from it matches no member.
    who = _optional_text(actor, "nickname") or _optional_text(actor, "display_name")
    pushes: list[RefPush] = []
    for change in _list(push, "changes"):
        if not isinstance(change, dict):
            raise Rejected(400, "push.changes holds a non-object")
        new, old = change.get("new"), change.get("old")
        if new is None:
            # The ref was deleted: its name is only in "old".
            if not isinstance(old, dict):
                raise Rejected(400, "A change has neither new nor old")
            pushes.append(_bitbucket_ref(old, head="", deleted=True, message="", pusher=who))
            continue
        if not isinstance(new, dict):
            raise Rejected(400, "A change's new is not an object")
        target = new.get("target")
        if not isinstance(target, dict):
            raise Rejected(400, "A change's new.target is not an object")
        pushes.append(
            _bitbucket_ref(
                new,
                head=_text(target, "hash").lower(),
                deleted=False,
                message=_message(target),
                subjects=_subjects(_list(change, "commits")),
                pusher=who,
            )
        )
    return pushes


def _bitbucket_ref(
    ref: dict[str, Any],
    *,
    head: str,
    deleted: bool,
    message: str,
    subjects: tuple[str, ...] = (),
    pusher: str = "",
) -> RefPush:
    kind = {"branch": "refs/heads/", "tag": "refs/tags/"}.get(_text(ref, "type"), "")
    name = _text(ref, "name")
    return _ref_push(
        f"{kind}{name}" if kind else name,
        head=head,
        deleted=deleted,
        message=message,
        subjects=subjects,
        pusher=pusher,
    )


def _custom(event: str, data: dict[str, Any]) -> ParseResult:
    payload = data.get("payload")
    if not isinstance(payload, dict):
        raise Rejected(400, 'The body needs a "payload" object')
    new_ref = _text(payload, "new_ref").strip().lower()
    branch = _text(payload, "branch").strip()
    if not branch:
        raise Rejected(400, "payload.branch is empty")
    if new_ref == "latest":
        # The tip of the branch, resolved by the worker when the deployment runs.
        return [RefPush(ref=f"refs/heads/{branch}", kind="branch", name=branch, head="")]
    if not ANY_SHA.fullmatch(new_ref):
        raise Rejected(400, 'payload.new_ref must be a commit SHA or "latest"')
    return [RefPush(ref=f"refs/heads/{branch}", kind="branch", name=branch, head=new_ref)]


def _commit_statuses(
    provider: str, event: str, data: dict[str, Any]
) -> tuple[gates.StatusReport, ...]:
    """A commit status event's report, or () for any other event.

    GitHub's ``status`` event (https://docs.github.com/en/webhooks/webhook-events-and-payloads
    #status): ``sha``, ``state`` (pending, success, failure, error), ``context``,
    ``description``; Gitea's and Forgejo's ``status`` event sends the same fields (and the
    state ``warning``). GitLab's ``Pipeline Hook`` (https://docs.gitlab.com/user/project/
    integrations/webhook_events/#pipeline-events): ``object_attributes.sha`` and ``.status``
    (created … success, failed, canceled), reported as the context ``gitlab/pipeline`` (or
    ``gitlab/<name>`` for a named pipeline).
    """
    github_like = (WebhookProvider.GITHUB, WebhookProvider.GITEA, WebhookProvider.FORGEJO)
    if provider in github_like and event == "status":
        sha = _text(data, "sha").lower()
        state = _text(data, "state")
        if state not in gates.GITHUB_STATES:
            raise Rejected(400, f"The payload's state {state[:20]!r} is not a commit state")
        context, description = _text(data, "context"), data.get("description")
        report_sha, report_state = sha, str(gates.GITHUB_STATES[state])
    elif provider == WebhookProvider.GITLAB and event == "Pipeline Hook":
        attributes = data.get("object_attributes")
        if not isinstance(attributes, dict):
            raise Rejected(400, "The payload has no object_attributes object")
        report_sha = _text(attributes, "sha").lower()
        status = _text(attributes, "status")
        if status not in gates.GITLAB_STATES:
            raise Rejected(400, f"The pipeline's status {status[:20]!r} is not known")
        report_state = str(gates.GITLAB_STATES[status])
        name = attributes.get("name")
        context = f"gitlab/{name}" if isinstance(name, str) and name else "gitlab/pipeline"
        description = f"pipeline {status}"
    else:
        return ()
    if not FULL_SHA.fullmatch(report_sha):
        raise Rejected(400, "The commit status's sha is not a full commit SHA")
    if not context.strip():
        raise Rejected(400, "The commit status has no context")
    return (
        gates.StatusReport(
            sha=report_sha,
            context=context.strip()[: gates.MAX_CONTEXT_LENGTH],
            state=report_state,
            description=description[:255] if isinstance(description, str) else "",
        ),
    )


_PARSERS: dict[str, Callable[[str, dict[str, Any]], ParseResult]] = {
    WebhookProvider.GITHUB: _github,
    WebhookProvider.GITEA: _github,
    WebhookProvider.FORGEJO: _github,
    WebhookProvider.GITLAB: _gitlab,
    WebhookProvider.BITBUCKET: _bitbucket,
    WebhookProvider.CUSTOM: _custom,
}


def _ref_push(
    ref: str,
    *,
    head: str,
    deleted: bool,
    message: str,
    subjects: tuple[str, ...],
    pusher_email: str = "",
    pusher: str = "",
) -> RefPush:
    if not deleted and not FULL_SHA.fullmatch(head):
        raise Rejected(400, "The pushed head is not a full commit SHA")
    if ref.startswith("refs/heads/"):
        kind: Literal["branch", "tag", "other"] = "branch"
        name = ref.removeprefix("refs/heads/")
    elif ref.startswith("refs/tags/"):
        kind, name = "tag", ref.removeprefix("refs/tags/")
    else:
        kind, name = "other", ref
    return RefPush(
        ref=ref[:255],
        kind=kind,
        name=name,
        head=head,
        deleted=deleted,
        message=message,
        subjects=subjects,
        pusher_email=pusher_email.strip()[:254],
        pusher=pusher.strip()[:150],
    )


def _object(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    """``data[key]`` when it is an object, else {} (an optional part of a payload)."""
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _optional_text(data: Mapping[str, Any], key: str) -> str:
    """``data[key]`` when it is a string, else "" (a field a provider may leave out or null)."""
    value = data.get(key)
    return value if isinstance(value, str) else ""


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise Rejected(400, f"The payload's {key} is missing or not a string")
    return value


def _list(data: Mapping[str, Any], key: str) -> list[Any]:
    value = data.get(key) or []
    if not isinstance(value, list):
        raise Rejected(400, f"The payload's {key} is not a list")
    return value


def _commit_with_id(commits: list[Any], sha: str) -> dict[str, Any] | None:
    for commit in commits:
        if isinstance(commit, dict) and str(commit.get("id", "")).lower() == sha:
            return commit
    return None


def _message(commit: object) -> str:
    if not isinstance(commit, dict):
        return ""
    message = commit.get("message")
    return message if isinstance(message, str) else ""


def _subjects(commits: list[Any]) -> tuple[str, ...]:
    subjects = []
    for commit in commits[:MAX_SUBJECTS]:
        lines = _message(commit).strip().splitlines()
        if lines:
            subjects.append(lines[0][:MAX_SUBJECT_LENGTH])
    return tuple(subjects)
