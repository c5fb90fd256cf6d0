"""Commit statuses for the CI gate: received from GitLab's and Gitea's webhooks (GitHub's are in
test_ci_gate_live), or asked of GitHub's, GitLab's and Gitea's APIs with an integration's token,
through a local stand-in that checks each request against the documented endpoint and headers:

- GitHub: GET /repos/{owner}/{repo}/commits/{ref}/status, Bearer token, Accept
  application/vnd.github+json, X-GitHub-Api-Version (docs.github.com, REST, commit statuses:
  get the combined status for a specific reference);
- GitLab: GET /projects/:id/repository/commits/:sha/statuses, PRIVATE-TOKEN (docs.gitlab.com,
  commits API: list the statuses of a commit);
- Gitea: GET /repos/{owner}/{repo}/commits/{ref}/status, Authorization: token ... (Gitea's
  swagger: repoGetCombinedStatusByRef).
"""

from __future__ import annotations

import http.server
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from builds import services
from builds.models import CommitStatus, Deployment, GatePolicy, Status, Trigger, WebhookOutcome
from projects.models import Integration
from tests.support.webserve import serve_in_background
from tests.webhooks import payloads
from tests.webhooks.payloads import fake_sha

pytestmark = pytest.mark.django_db

SHA = fake_sha("ci")
TOKENS = {"github": "ghp_gatesTOKEN0123", "gitlab": "glpat-gatesTOKEN0123", "gitea": "gitea0123"}


def test_a_gitlab_pipeline_hook_records_the_pipeline_status(shop, post):
    body = payloads.encode(
        {
            "object_kind": "pipeline",
            "object_attributes": {"id": 31, "ref": "main", "sha": SHA, "status": "success"},
            "project": {"path_with_namespace": "acme/shop"},
        }
    )

    delivered = post(
        shop, body, **payloads.gitlab_headers(shop.webhook_secret, event="Pipeline Hook")
    )

    assert delivered.json()["status"] == WebhookOutcome.RECORDED
    row = CommitStatus.objects.get(project=shop, sha=SHA)
    assert (row.context, row.state, row.source) == ("gitlab/pipeline", "success", "gitlab")


def test_a_gitea_status_event_records_the_status_and_a_bad_one_is_refused(shop, post):
    body = payloads.encode(
        {"sha": SHA, "state": "failure", "context": "woodpecker", "description": "tests failed"}
    )
    headers = payloads.gitea_headers(body, shop.webhook_secret)
    headers.update(
        HTTP_X_GITEA_EVENT="status", HTTP_X_GITHUB_EVENT="status", HTTP_X_GOGS_EVENT="status"
    )

    assert post(shop, body, **headers).json()["status"] == WebhookOutcome.RECORDED
    assert CommitStatus.objects.get(project=shop, context="woodpecker").state == "failure"
    odd = payloads.encode({"sha": SHA, "state": "purple", "context": "woodpecker"})
    headers = payloads.gitea_headers(odd, shop.webhook_secret)
    headers.update(
        HTTP_X_GITEA_EVENT="status", HTTP_X_GITHUB_EVENT="status", HTTP_X_GOGS_EVENT="status"
    )
    refused = post(shop, odd, **headers)
    assert refused.status_code == 400
    assert "state" in refused.json()["reason"]


def test_a_status_with_a_wrong_signature_is_rejected_and_records_nothing(shop, post):
    body = payloads.encode({"sha": SHA, "state": "success", "context": "ci/test"})
    headers = payloads.github_headers(body, "not-the-secret", event="status")

    assert post(shop, body, **headers).status_code == 401
    assert not CommitStatus.objects.exists()


class StatusHosts:
    """GET-only stand-ins for the three hosts' status endpoints; ``states`` per provider."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.states: dict[str, str] = {"github": "pending", "gitlab": "running", "gitea": "pending"}
        hosts = self
        routes = {
            "github": re.compile(r"^/github/api/v3/repos/acme/shop/commits/([0-9a-f]{40})/status$"),
            "gitlab": re.compile(
                r"^/gitlab/api/v4/projects/acme%2Fshop/repository/commits/([0-9a-f]{40})/statuses$"
            ),
            "gitea": re.compile(r"^/gitea/api/v1/repos/acme/shop/commits/([0-9a-f]{40})/status$"),
        }

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, document = hosts.answer(self.path, self.headers, routes)
                content = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        serve_in_background(self.httpd)

    def answer(
        self, path: str, headers: Any, routes: dict[str, re.Pattern[str]]
    ) -> tuple[int, Any]:
        for provider, route in routes.items():
            match = route.match(path)
            if match is None:
                continue
            if not self._authorised(provider, headers):
                return 401, {"message": "Bad credentials"}
            self.calls.append(provider)
            sha, state = match.group(1), self.states[provider]
            if provider == "gitlab":
                return 200, [{"id": 1, "sha": sha, "name": "test", "status": state}]
            return 200, {
                "state": state,
                "sha": sha,
                "total_count": 1,
                "statuses": [{"context": f"{provider}-ci", "state": state, "description": ""}],
            }
        return 404, {"message": "Not Found"}

    @staticmethod
    def _authorised(provider: str, headers: Any) -> bool:
        if provider == "github":
            return (
                headers.get("Authorization") == f"Bearer {TOKENS['github']}"
                and headers.get("Accept") == "application/vnd.github+json"
                and headers.get("X-GitHub-Api-Version") == "2022-11-28"
            )
        if provider == "gitlab":
            return headers.get("PRIVATE-TOKEN") == TOKENS["gitlab"]
        return headers.get("Authorization") == f"token {TOKENS['gitea']}"

    def base_url(self, provider: str) -> str:
        prefix = {"github": "/github/api/v3", "gitlab": "/gitlab/api/v4", "gitea": "/gitea/api/v1"}
        return f"http://127.0.0.1:{self.port}{prefix[provider]}"


@pytest.fixture
def hosts(settings) -> Iterator[StatusHosts]:
    settings.ALLOW_PRIVATE_NOTIFICATION_TARGETS = True
    server = StatusHosts()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.mark.parametrize("provider", ["github", "gitlab", "gitea"])
def test_a_held_deployment_asks_the_hosts_api_and_runs_once_it_answers_green(
    shop, make_server, hosts, provider
):
    Integration.objects.create(
        project=shop,
        kind=provider,
        base_url=hosts.base_url(provider),
        repository="acme/shop",
        token=TOKENS[provider],
    )
    web1 = make_server(shop, "web1", environment="production")
    GatePolicy.objects.create(project=shop, environment="production", require_ci=True)

    held = services.deployment_create(
        project=shop, servers=[web1], revision=SHA, trigger=Trigger.WEBHOOK
    )

    assert held.status == Status.GATED
    assert hosts.calls == [provider]
    hosts.states[provider] = "success"
    assert services.gates_tick() == 1
    assert Deployment.objects.get(pk=held.pk).status == Status.QUEUED
    assert CommitStatus.objects.get(project=shop, sha=SHA).source == f"api:{provider}"
    assert TOKENS[provider] not in json.dumps(Deployment.objects.get(pk=held.pk).gates)
