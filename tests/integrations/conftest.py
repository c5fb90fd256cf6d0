"""A local stand-in for GitHub, GitLab, Gitea and Sentry: one HTTP server on 127.0.0.1 that
answers each provider's endpoints under its own prefix (/github/api/v3 as GitHub Enterprise
serves it, /gitlab/api/v4, /gitea/api/v1, /sentry) and checks every request against the
provider's documented format: method, path, the authentication header's scheme and token,
GitHub's Accept and API version headers, and the JSON body (an unknown or missing field, or a
value outside the documented ones, is refused with the status the provider uses: 422 for
GitHub and Gitea, 400 for GitLab and Sentry). It answers as they do, with ids, and can fail
on demand (a 500 before the real answer) to exercise retries.

Formats, as documented:
- GitHub: https://docs.github.com/en/rest/commits/statuses#create-a-commit-status,
  https://docs.github.com/en/rest/deployments/deployments#create-a-deployment,
  https://docs.github.com/en/rest/deployments/statuses#create-a-deployment-status
- GitLab: https://docs.gitlab.com/api/deployments/ (create; update takes only status)
- Gitea: the swagger of /repos/{owner}/{repo}/statuses/{sha} (CreateStatusOption)
- Sentry: https://docs.sentry.io/api/releases/create-a-new-release-for-an-organization/,
  https://docs.sentry.io/api/releases/create-a-deploy/
"""

from __future__ import annotations

import http.server
import itertools
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.utils import timezone

from builds.notifications import delivery_attempt
from projects.models import DELIVERY_OPEN, NotificationDelivery
from tests.support.webserve import serve_in_background

TOKENS = {
    "github": "ghp_githubTOKEN0123456789abcdef",
    "gitlab": "glpat-gitlabTOKEN0123456789",
    "gitea": "giteaTOKEN0123456789abcdef",
    "sentry": "sntrys_sentryTOKEN0123456789",
}
SHA = re.compile(r"^[0-9a-f]{40}$")


@dataclass
class Call:
    """One request the emulator accepted, as a test reads it."""

    provider: str
    method: str
    path: str
    body: Any

    @property
    def summary(self) -> str:
        return f"{self.provider} {self.method} {self.path}"


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status, self.message = status, message


def _fields(body: Any, *, required: set[str], optional: set[str], status: int) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise Refused(status, "Problems parsing JSON")
    missing = required - set(body)
    unknown = set(body) - required - optional
    if missing:
        raise Refused(status, f"missing field(s): {sorted(missing)}")
    if unknown:
        raise Refused(status, f"unknown field(s): {sorted(unknown)}")
    return body


def _one_of(body: dict[str, Any], name: str, allowed: set[str], status: int) -> None:
    if body[name] not in allowed:
        raise Refused(status, f"{name} {body[name]!r} is not one of {sorted(allowed)}")


@dataclass
class Providers:
    calls: list[Call] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    # Statuses to answer the next requests with before handling them ("500 then 201").
    failures: list[int] = field(default_factory=list)
    path_failures: list[tuple[str, int]] = field(default_factory=list)
    github_deployments: dict[int, str] = field(default_factory=dict)
    gitlab_deployments: dict[int, dict[str, Any]] = field(default_factory=dict)
    sentry_releases: set[str] = field(default_factory=set)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1001))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        handler = type("Handler", (_Handler,), {"providers": self})
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        self.thread = serve_in_background(self.httpd)

    def base_url(self, provider: str) -> str:
        prefix = {
            "github": "/github/api/v3",
            "gitlab": "/gitlab/api/v4",
            "gitea": "/gitea/api/v1",
            "sentry": "/sentry",
        }[provider]
        return f"http://127.0.0.1:{self.port}{prefix}"

    def fail_next(self, *statuses: int) -> None:
        with self._lock:
            self.failures.extend(statuses)

    def fail_next_matching(self, fragment: str, *statuses: int) -> None:
        """Answer the next requests whose path contains ``fragment`` with ``statuses``."""
        with self._lock:
            self.path_failures.extend((fragment, status) for status in statuses)

    def of(self, provider: str) -> list[Call]:
        return [call for call in self.calls if call.provider == provider]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # ------------------------------------------------------------------ routing

    def handle(
        self, method: str, path: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, Any]:
        with self._lock:
            if self.failures:
                return self.failures.pop(0), {"message": "Server Error"}
            for position, (fragment, status) in enumerate(self.path_failures):
                if fragment in path:
                    del self.path_failures[position]
                    return status, {"message": "Server Error"}
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return 400, {"message": "Problems parsing JSON"}
        if headers.get("content-type") != "application/json":
            return 415, {"message": "Content-Type must be application/json"}
        if not headers.get("user-agent"):
            return 403, {"message": "Request forbidden: a User-Agent header is required"}
        for provider, route in (
            ("github", self._github),
            ("gitlab", self._gitlab),
            ("gitea", self._gitea),
            ("sentry", self._sentry),
        ):
            prefix = self.base_url(provider).split(str(self.port), 1)[1]
            if path.startswith(prefix + "/"):
                try:
                    status, answer = route(method, path[len(prefix) :], headers, body)
                except Refused as exc:
                    self.refusals.append(f"{provider} {method} {path}: {exc.message}")
                    return exc.status, {"message": exc.message}
                with self._lock:
                    self.calls.append(Call(provider, method, path[len(prefix) :], body))
                return status, answer
        return 404, {"message": "Not Found"}

    def _next_id(self) -> int:
        with self._lock:
            return next(self._ids)

    def _github(
        self, method: str, path: str, headers: dict[str, str], body: Any
    ) -> tuple[int, Any]:
        if headers.get("authorization") != f"Bearer {TOKENS['github']}":
            raise Refused(401, "Bad credentials")
        if headers.get("accept") != "application/vnd.github+json":
            raise Refused(415, "Accept must be application/vnd.github+json")
        if headers.get("x-github-api-version") != "2022-11-28":
            raise Refused(400, "X-GitHub-Api-Version must be a supported version")
        if method != "POST":
            raise Refused(404, "Not Found")
        if match := re.fullmatch(r"/repos/acme/shop/statuses/([^/]+)", path):
            if not SHA.match(match.group(1)):
                raise Refused(422, "No commit found for SHA")
            status = _fields(
                body,
                required={"state"},
                optional={"target_url", "description", "context"},
                status=422,
            )
            _one_of(status, "state", {"error", "failure", "pending", "success"}, 422)
            if len(status.get("description") or "") > 140:
                raise Refused(422, "description is too long (maximum is 140 characters)")
            return 201, {"id": self._next_id(), "state": status["state"]}
        if path == "/repos/acme/shop/deployments":
            deployment = _fields(
                body,
                required={"ref"},
                optional={
                    "task",
                    "auto_merge",
                    "required_contexts",
                    "payload",
                    "environment",
                    "description",
                    "transient_environment",
                    "production_environment",
                },
                status=422,
            )
            if not isinstance(deployment.get("required_contexts", []), list):
                raise Refused(422, "required_contexts must be an array")
            identifier = self._next_id()
            self.github_deployments[identifier] = deployment["ref"]
            return 201, {"id": identifier, "ref": deployment["ref"], "sha": deployment["ref"]}
        if match := re.fullmatch(r"/repos/acme/shop/deployments/([0-9]+)/statuses", path):
            if int(match.group(1)) not in self.github_deployments:
                raise Refused(404, "Not Found")
            status = _fields(
                body,
                required={"state"},
                optional={
                    "target_url",
                    "log_url",
                    "description",
                    "environment",
                    "environment_url",
                    "auto_inactive",
                },
                status=422,
            )
            _one_of(
                status,
                "state",
                {"error", "failure", "inactive", "in_progress", "queued", "pending", "success"},
                422,
            )
            return 201, {"id": self._next_id(), "state": status["state"]}
        raise Refused(404, "Not Found")

    def _gitlab(
        self, method: str, path: str, headers: dict[str, str], body: Any
    ) -> tuple[int, Any]:
        if headers.get("private-token") != TOKENS["gitlab"]:
            raise Refused(401, "401 Unauthorized")
        statuses = {"created", "running", "success", "failed", "canceled", "blocked"}
        # The project by its URL-encoded path, as the API documents it.
        if method == "POST" and path == "/projects/acme%2Fshop/deployments":
            deployment = _fields(
                body,
                required={"environment", "sha", "ref", "tag", "status"},
                optional=set(),
                status=400,
            )
            _one_of(deployment, "status", statuses, 400)
            if not SHA.match(deployment["sha"]) or deployment["tag"] is not False:
                raise Refused(400, "sha is invalid or tag is not a boolean")
            identifier = self._next_id()
            self.gitlab_deployments[identifier] = dict(deployment)
            return 201, {"id": identifier, "iid": len(self.gitlab_deployments), **deployment}
        if match := re.fullmatch(r"/projects/acme%2Fshop/deployments/([0-9]+)", path):
            if method != "PUT" or int(match.group(1)) not in self.gitlab_deployments:
                raise Refused(404, "404 Not found")
            update = _fields(body, required={"status"}, optional=set(), status=400)
            _one_of(update, "status", statuses, 400)
            self.gitlab_deployments[int(match.group(1))]["status"] = update["status"]
            return 200, {"id": int(match.group(1)), "status": update["status"]}
        raise Refused(404, "404 Not found")

    def _gitea(self, method: str, path: str, headers: dict[str, str], body: Any) -> tuple[int, Any]:
        if headers.get("authorization") != f"token {TOKENS['gitea']}":
            raise Refused(401, "token is required")
        match = re.fullmatch(r"/repos/acme/shop/statuses/([^/]+)", path)
        if method != "POST" or match is None:
            raise Refused(404, "The target couldn't be found.")
        if not SHA.match(match.group(1)):
            raise Refused(422, "sha is not a commit")
        status = _fields(
            body, required={"state"}, optional={"target_url", "description", "context"}, status=422
        )
        _one_of(status, "state", {"pending", "success", "error", "failure", "warning"}, 422)
        return 201, {"id": self._next_id(), "status": status["state"]}

    def _sentry(
        self, method: str, path: str, headers: dict[str, str], body: Any
    ) -> tuple[int, Any]:
        if headers.get("authorization") != f"Bearer {TOKENS['sentry']}":
            raise Refused(401, "Invalid token")
        if method == "POST" and path == "/api/0/organizations/acme/releases/":
            release = _fields(
                body,
                required={"version", "projects"},
                optional={"ref", "url", "dateReleased", "commits", "refs"},
                status=400,
            )
            if release["projects"] != ["shop"]:
                raise Refused(400, "Invalid project ids or slugs")
            if release["version"] in self.sentry_releases:
                return 208, {"version": release["version"]}
            self.sentry_releases.add(release["version"])
            return 201, {"version": release["version"], "id": self._next_id()}
        match = re.fullmatch(r"/api/0/organizations/acme/releases/([^/]+)/deploys/", path)
        if method == "POST" and match:
            if match.group(1) not in self.sentry_releases:
                raise Refused(404, "The requested resource does not exist")
            deploy = _fields(
                body,
                required={"environment"},
                optional={"name", "url", "dateStarted", "dateFinished", "projects"},
                status=400,
            )
            return 201, {"id": str(self._next_id()), **deploy}
        raise Refused(404, "The requested resource does not exist")


class _Handler(http.server.BaseHTTPRequestHandler):
    providers: Providers

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        headers = {name.lower(): value for name, value in self.headers.items()}
        status, document = self.providers.handle(self.command, self.path, headers, raw)
        content = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    do_POST = _answer
    do_PUT = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def providers() -> Iterator[Providers]:
    server = Providers()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def private_targets(settings):
    """The emulator is on loopback: allowed here as an on-premise GitLab or Gitea would be."""
    settings.ALLOW_PRIVATE_NOTIFICATION_TARGETS = True
    return settings


def send_due(*, rounds: int = 10) -> None:
    """Send every open delivery in the order they were recorded, as a worker would, with each
    retry made due at once; until none is left open (or ``rounds`` passes)."""
    for _ in range(rounds):
        open_ids = list(
            NotificationDelivery.objects.filter(status__in=DELIVERY_OPEN)
            .order_by("id")
            .values_list("pk", flat=True)
        )
        if not open_ids:
            return
        NotificationDelivery.objects.filter(pk__in=open_ids).update(next_attempt_at=timezone.now())
        for delivery_id in open_ids:
            delivery_attempt(delivery_id)
