"""Push payloads in each provider's documented shape, and the headers that sign them.

The shapes follow the providers' own documentation (GitHub "push" and "ping", GitLab "Push
Hook" and "Tag Push Hook", Bitbucket Cloud "repo:push", Gitea/Forgejo "push"), trimmed of
fields Slipway never reads but keeping enough of them that a parser leaning on a field that is
not there would be caught.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from typing import Any

ZEROS = "0" * 40


def fake_sha(seed: str) -> str:
    return hashlib.sha1(seed.encode(), usedforsecurity=False).hexdigest()


def hmac_hex(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


def _author() -> dict[str, str]:
    return {"name": "Alice Example", "email": "alice@example.com", "username": "alice"}


def github_push(
    *,
    ref: str = "refs/heads/main",
    after: str | None = None,
    before: str | None = None,
    commits: list[tuple[str, str]] | None = None,
    deleted: bool = False,
) -> dict[str, Any]:
    """A GitHub push event; ``commits`` are (sha, message), oldest first."""
    if commits is None:
        commits = [] if deleted else [(after or fake_sha("head"), "Change files")]
    after = ZEROS if deleted else (after or commits[-1][0])
    commit_objects = [
        {
            "id": sha,
            "tree_id": fake_sha("tree" + sha),
            "distinct": True,
            "message": message,
            "timestamp": "2026-11-27T10:00:00+00:00",
            "url": f"https://github.com/acme/shop/commit/{sha}",
            "author": _author(),
            "committer": _author(),
            "added": [],
            "removed": [],
            "modified": ["index.html"],
        }
        for sha, message in commits
    ]
    return {
        "ref": ref,
        "before": before or fake_sha("before"),
        "after": after,
        "repository": {
            "id": 1296269,
            "name": "shop",
            "full_name": "acme/shop",
            "private": True,
            "clone_url": "https://github.com/acme/shop.git",
            "default_branch": "main",
        },
        "pusher": {"name": "alice", "email": "alice@example.com"},
        "sender": {"login": "alice", "id": 1},
        "created": False,
        "deleted": deleted,
        "forced": False,
        "base_ref": None,
        "compare": "https://github.com/acme/shop/compare/a...b",
        "commits": commit_objects,
        "head_commit": None if deleted else commit_objects[-1],
    }


def github_ping() -> dict[str, Any]:
    return {
        "zen": "Keep it logically awesome.",
        "hook_id": 1234,
        "hook": {"type": "Repository", "id": 1234, "events": ["push"], "active": True},
        "repository": {"id": 1296269, "full_name": "acme/shop"},
        "sender": {"login": "alice", "id": 1},
    }


def github_headers(
    body: bytes, secret: str, *, event: str = "push", delivery: str | None = None
) -> dict[str, Any]:
    return {
        "HTTP_X_GITHUB_EVENT": event,
        "HTTP_X_GITHUB_DELIVERY": delivery or str(uuid.uuid4()),
        "HTTP_X_GITHUB_HOOK_ID": "1234",
        "HTTP_X_HUB_SIGNATURE_256": "sha256=" + hmac_hex(secret, body),
        "HTTP_USER_AGENT": "GitHub-Hookshot/abc123",
    }


def gitlab_push(
    *,
    ref: str = "refs/heads/main",
    after: str | None = None,
    commits: list[tuple[str, str]] | None = None,
    tag: bool = False,
) -> dict[str, Any]:
    """A GitLab Push Hook (or Tag Push Hook); ``commits`` oldest first, as GitLab lists them."""
    commits = commits if commits is not None else [(after or fake_sha("head"), "Change files")]
    after = after or (commits[-1][0] if commits else ZEROS)
    return {
        "object_kind": "tag_push" if tag else "push",
        "event_name": "tag_push" if tag else "push",
        "before": fake_sha("before"),
        "after": after,
        "ref": ref,
        "ref_protected": True,
        "checkout_sha": None if after == ZEROS else after,
        "message": None,
        "user_id": 4,
        "user_name": "Alice Example",
        "user_username": "alice",
        "user_email": "",
        "project_id": 15,
        "project": {
            "id": 15,
            "name": "Shop",
            "path_with_namespace": "acme/shop",
            "default_branch": "main",
            "git_ssh_url": "git@gitlab.example.com:acme/shop.git",
        },
        "commits": [
            {
                "id": sha,
                "message": message,
                "title": message.splitlines()[0] if message else "",
                "timestamp": "2026-11-27T10:00:00+00:00",
                "url": f"https://gitlab.example.com/acme/shop/-/commit/{sha}",
                "author": {"name": "Alice Example", "email": "[REDACTED]"},
                "added": [],
                "modified": ["index.html"],
                "removed": [],
            }
            for sha, message in commits
        ],
        "total_commits_count": len(commits),
        "push_options": {},
        "repository": {"name": "Shop", "git_ssh_url": "git@gitlab.example.com:acme/shop.git"},
    }


def gitlab_headers(
    secret: str, *, event: str = "Push Hook", idempotency_key: str | None = None
) -> dict[str, Any]:
    return {
        "HTTP_X_GITLAB_EVENT": event,
        "HTTP_X_GITLAB_TOKEN": secret,
        "HTTP_X_GITLAB_INSTANCE": "https://gitlab.example.com",
        "HTTP_X_GITLAB_WEBHOOK_UUID": str(uuid.uuid4()),
        "HTTP_X_GITLAB_EVENT_UUID": str(uuid.uuid4()),
        "HTTP_IDEMPOTENCY_KEY": idempotency_key or str(uuid.uuid4()),
    }


def bitbucket_change(
    *,
    name: str = "main",
    kind: str = "branch",
    head: str | None = None,
    message: str = "Change files\n",
    deleted: bool = False,
) -> dict[str, Any]:
    head = head or fake_sha(f"bb-{name}")
    reference: dict[str, Any] = {
        "type": kind,
        "name": name,
        "target": {
            "type": "commit",
            "hash": head,
            "message": message,
            "date": "2026-11-27T10:00:00+00:00",
            "author": {"type": "author", "raw": "Alice Example <alice@example.com>"},
            "parents": [{"type": "commit", "hash": fake_sha("parent")}],
        },
        "links": {"html": {"href": f"https://bitbucket.org/acme/shop/branch/{name}"}},
    }
    old = {**reference, "target": {**reference["target"], "hash": fake_sha("old-" + name)}}
    return {
        "new": None if deleted else reference,
        "old": old,
        "links": {},
        "created": False,
        "forced": False,
        "closed": deleted,
        "commits": []
        if deleted
        else [{"type": "commit", "hash": head, "message": message, "author": {}}],
        "truncated": False,
    }


def bitbucket_push(*changes: dict[str, Any]) -> dict[str, Any]:
    return {
        "actor": {"type": "user", "display_name": "Alice Example", "uuid": "{alice}"},
        "repository": {"type": "repository", "full_name": "acme/shop", "uuid": "{repo}"},
        "push": {"changes": list(changes)},
    }


def bitbucket_headers(
    body: bytes, secret: str, *, event: str = "repo:push", request_uuid: str | None = None
) -> dict[str, Any]:
    return {
        "HTTP_X_EVENT_KEY": event,
        "HTTP_X_REQUEST_UUID": request_uuid or str(uuid.uuid4()),
        "HTTP_X_HOOK_UUID": str(uuid.uuid4()),
        "HTTP_X_ATTEMPT_NUMBER": "1",
        "HTTP_X_HUB_SIGNATURE": "sha256=" + hmac_hex(secret, body),
        "HTTP_USER_AGENT": "Bitbucket-Webhooks/2.0",
    }


def gitea_push(
    *, ref: str = "refs/heads/main", commits: list[tuple[str, str]] | None = None
) -> dict[str, Any]:
    commits = commits or [(fake_sha("gitea-head"), "Change files\n")]
    commit_objects = [
        {
            "id": sha,
            "message": message,
            "url": f"https://git.example.com/acme/shop/commit/{sha}",
            "author": _author(),
            "committer": _author(),
            "verification": None,
            "timestamp": "2026-11-27T10:00:00Z",
            "added": [],
            "removed": [],
            "modified": ["index.html"],
        }
        for sha, message in commits
    ]
    return {
        "ref": ref,
        "before": fake_sha("before"),
        "after": commits[-1][0],
        "compare_url": "https://git.example.com/acme/shop/compare/a...b",
        "commits": commit_objects,
        "total_commits": len(commits),
        "head_commit": commit_objects[-1],
        "repository": {"id": 140, "full_name": "acme/shop", "private": True},
        "pusher": {"id": 1, "login": "alice"},
        "sender": {"id": 1, "login": "alice"},
    }


def gitea_headers(
    body: bytes, secret: str, *, forgejo: bool = False, delivery: str | None = None
) -> dict[str, Any]:
    """What Gitea (or Forgejo) sends: its own headers plus GitHub's and Gogs' copies."""
    delivery = delivery or str(uuid.uuid4())
    signature = hmac_hex(secret, body)
    headers = {
        "HTTP_X_GITHUB_EVENT": "push",
        "HTTP_X_GITHUB_DELIVERY": delivery,
        "HTTP_X_GOGS_EVENT": "push",
        "HTTP_X_GOGS_DELIVERY": delivery,
        "HTTP_X_GOGS_SIGNATURE": signature,
        "HTTP_X_GITEA_EVENT": "push",
        "HTTP_X_GITEA_EVENT_TYPE": "push",
        "HTTP_X_GITEA_DELIVERY": delivery,
        "HTTP_X_GITEA_SIGNATURE": signature,
        "HTTP_X_HUB_SIGNATURE_256": "sha256=" + signature,
    }
    if forgejo:
        headers |= {
            "HTTP_X_FORGEJO_EVENT": "push",
            "HTTP_X_FORGEJO_EVENT_TYPE": "push",
            "HTTP_X_FORGEJO_DELIVERY": delivery,
            "HTTP_X_FORGEJO_SIGNATURE": signature,
        }
    return headers


def custom_headers(
    secret: str, *, body: bytes | None = None, delivery: str | None = None
) -> dict[str, Any]:
    """Custom JSON's credential: the secret as X-Slipway-Token, or with ``body`` its HMAC."""
    headers: dict[str, Any] = {}
    if body is None:
        headers["HTTP_X_SLIPWAY_TOKEN"] = secret
    else:
        headers["HTTP_X_SLIPWAY_SIGNATURE"] = "sha256=" + hmac_hex(secret, body)
    if delivery is not None:
        headers["HTTP_X_DELIVERY_ID"] = delivery
    return headers
