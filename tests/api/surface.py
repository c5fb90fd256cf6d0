"""The API's surface for tests that go over all of it: one real object of every kind, and
every operation that changes something, with real paths, read from the OpenAPI schema."""

from __future__ import annotations

from datetime import time
from typing import Any

from rest_framework.test import APIClient

from builds.models import (
    Deployment,
    DriftCheck,
    DriftStatus,
    GatePolicy,
    LogLine,
    Schedule,
    Status,
)
from projects.models import (
    BuildCommand,
    Command,
    ConfigFile,
    EnvironmentVariable,
    ExcludedFile,
    FreezeWindow,
    Integration,
    Notification,
    Project,
    ProjectTemplate,
)
from servers.models import HealthCheck, Release, Server, ServerGroup

SCHEMA_URL = "/api/schema/?format=json"


def one_of_each(project: Project) -> dict[str, Any]:
    """One real object of every kind a write operation's path names (no network reached:
    the server's port 9 is closed)."""
    server = Server.objects.create(
        project=project,
        name="web1",
        hostname="127.0.0.1",
        port=9,
        username="deploy",
        deploy_path="/srv/shop",
        host_key_fingerprint="SHA256:" + "a" * 43,
    )
    deployment = Deployment.objects.create(project=project, status=Status.SUCCEEDED)
    LogLine.objects.create(deployment=deployment, seq=1, text="hello")
    release = Release.objects.create(
        server=server, deployment=deployment, name="20260101-000000000-abcdef0", revision="a" * 40
    )
    DriftCheck.objects.create(
        server=server,
        release=release,
        release_name=release.name,
        status=DriftStatus.DRIFTED,
        checked_count=3,
        changed_count=1,
        files=[
            {"path": "index.php", "change": "changed", "size": 3, "mtime": "2026-01-01T00:00:00Z"}
        ],
        fingerprint="f" * 64,
    )
    ids = {
        "commands": Command.objects.create(project=project, command="true").pk,
        "config-files": ConfigFile.objects.create(project=project, path=".env").pk,
        "excluded-files": ExcludedFile.objects.create(project=project, pattern="*.md").pk,
        "environment": EnvironmentVariable.objects.create(project=project, name="A").pk,
        "build-commands": BuildCommand.objects.create(project=project, command="true").pk,
        "groups": ServerGroup.objects.create(project=project, name="all").pk,
        "health-checks": HealthCheck.objects.create(
            project=project, kind="command", command="true"
        ).pk,
        "notifications": Notification.objects.create(
            project=project, kind="slack", url="https://1.1.1.1/services/T/B/token"
        ).pk,
        "integrations": Integration.objects.create(
            project=project,
            kind="github",
            base_url="https://1.1.1.1/api/v3",
            repository="acme/shop",
            token="ghp_token",
        ).pk,
        "schedules": Schedule.objects.create(
            project=project, name="nightly", kind="daily", time_of_day=time(3, 0)
        ).pk,
        "templates": ProjectTemplate.objects.create(name="Starter", contents={}).pk,
        "gates": GatePolicy.objects.create(project=project, environment="production").pk,
        "freeze-windows": FreezeWindow.objects.create(
            project=project,
            name="weekend",
            weekdays=[5, 6],
            start_time=time(0, 0),
            end_time=time(0, 0),
        ).pk,
    }
    return {
        "slug": project.slug,
        "server_id": server.pk,
        "deployment_id": deployment.pk,
        "username": "bob",
        "name": release.name,
        "ids": ids,
    }


def write_operations(
    client: APIClient, objects: dict[str, Any]
) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(method, documented path, real path, operation) of every operation that changes
    something, its path parameters replaced by ``objects`` (from one_of_each)."""
    schema = client.get(SCHEMA_URL).json()
    operations = []
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            if method in ("get", "head", "options"):
                continue
            real = path
            for name in ("slug", "server_id", "deployment_id", "username", "name"):
                real = real.replace(f"{{{name}}}", str(objects[name]))
            for kind, pk in objects["ids"].items():
                real = real.replace(f"/{kind}/{{id}}/", f"/{kind}/{pk}/")
            assert "{" not in real, f"no object for {path}"
            operations.append((method, path, real, operation))
    assert len(operations) > 25
    return operations


def request_properties(schema: dict[str, Any], operation: dict[str, Any]) -> list[str]:
    """The names of the fields an operation's JSON body takes."""
    body = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if not body:
        return []
    component = body["schema"]
    if "$ref" in component:
        component = schema["components"]["schemas"][component["$ref"].rsplit("/", 1)[-1]]
    return sorted(component.get("properties", {}))
