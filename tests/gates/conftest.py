"""Gates tests: the webhook tests' poster and the API clients' personas."""

from __future__ import annotations

import json
from typing import Any

from tests.webhooks import payloads
from tests.webhooks.conftest import fast_password_hashing, make_server, post, shop  # noqa: F401


def github_status(sha: str, state: str, context: str = "ci/test") -> dict[str, Any]:
    """GitHub's `status` event, as documented (docs.github.com, webhook events: status)."""
    return {
        "id": 6805126730,
        "sha": sha,
        "name": "acme/shop",
        "target_url": "https://ci.example.com/builds/1",
        "context": context,
        "description": f"The build {state}",
        "state": state,
        "commit": {"sha": sha},
        "branches": [{"name": "main", "commit": {"sha": sha}}],
        "created_at": "2026-12-02T10:00:00Z",
        "updated_at": "2026-12-02T10:00:00Z",
        "repository": {"full_name": "acme/shop"},
        "sender": {"login": "ci-bot"},
    }


def post_github_status(poster, project, sha: str, state: str, context: str = "ci/test"):
    body = json.dumps(github_status(sha, state, context)).encode()
    return poster(
        project, body, **payloads.github_headers(body, project.webhook_secret, event="status")
    )
