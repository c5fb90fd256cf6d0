"""The served Slipway (embedded `manage.py serve`, as `make run`) and a project on a real sshd
target that the CLI tests drive."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.processes import clean_env, free_port, manage, start_serve, stop


@pytest.fixture(scope="session")
def served(tmp_path_factory) -> Iterator[dict[str, Any]]:
    # One for every CLI module: its projects are named after their sshd target's port, so
    # tests never share one; starting it (migrate, admin, token, serve) takes ~8 s.
    data = tmp_path_factory.mktemp("cli-served")
    port = free_port()
    env = clean_env(
        SLIPWAY_DATA_DIR=str(data),
        SLIPWAY_BIND=f"127.0.0.1:{port}",
        SLIPWAY_ALLOW_LOCAL_REPOSITORIES="true",
        SLIPWAY_ADMIN_PASSWORD="cli-admin-password-1",
    )
    for command in (("migrate", "--noinput"), ("ensure_admin",)):
        assert manage(*command, env=env).returncode == 0
    token = manage("issue_token", "admin", env=env).stdout.strip().splitlines()[-1]
    assert token.startswith("slw_")
    process = start_serve(env, data / "serve.log")
    try:
        yield {
            "url": f"http://127.0.0.1:{port}",
            "token": token,
            "log": str(data / "serve.log"),
            "env": env,
        }
    finally:
        stop(process)


@pytest.fixture
def project(served, git_repo_factory, sshd_target) -> Iterator[dict[str, object]]:
    repo = git_repo_factory()
    repo.commit({"index.html": "first\n"}, "First")
    api = httpx.Client(
        base_url=served["url"] + "/api/v1",
        headers={"Authorization": f"Bearer {served['token']}"},
        timeout=30,
    )
    created = api.post(
        "/projects/",
        json={"name": f"Shop {sshd_target.port}", "repository_url": repo.url, "branch": "main"},
    )
    assert created.status_code == 201, created.text
    slug = created.json()["slug"]
    sshd_target.authorize(created.json()["public_key"])
    server = api.post(
        f"/projects/{slug}/servers/",
        json={
            "name": "web1",
            "hostname": sshd_target.hostname,
            "port": sshd_target.port,
            "username": sshd_target.username,
            "deploy_path": str(sshd_target.deploy_path),
        },
    )
    assert server.status_code == 201, server.text
    check = api.post(f"/projects/{slug}/servers/{server.json()['id']}/check/").json()
    trust = api.post(
        f"/projects/{slug}/servers/{server.json()['id']}/trust/",
        json={"fingerprint": check["host_key_fingerprint"]},
    )
    assert trust.status_code == 200, trust.text
    yield {"slug": slug, "api": api, "repo": repo}
    api.close()
