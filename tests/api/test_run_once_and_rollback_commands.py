"""Run-once and after-rollback commands configured through the API, run by the Celery task on
three real sshd servers: a migration runs once per deployment, its reversal only in the
rollback, with the revisions it goes between; the log says where each ran."""

from __future__ import annotations

from typing import Any

import pytest

from builds.models import Status
from builds.tasks import run_deployment

pytestmark = pytest.mark.django_db(transaction=True)

MIGRATE = "echo migrating on %server%; echo %endrev% >> %deploy_path%/migrated"
REVERSE = "echo %rollback% %startrev% %endrev% >> %deploy_path%/reversed"


def _run(api, deployment_id: int) -> dict[str, Any]:
    run_deployment.apply(args=(deployment_id,))
    detail = api.get(f"/api/v1/deployments/{deployment_id}/").json()
    assert detail["status"] == Status.SUCCEEDED, detail["error"]
    return detail


def _lines(target, name: str) -> list[str]:
    path = target.deploy_path / name
    return path.read_text().splitlines() if path.exists() else []


def _log(api, deployment_id: int) -> list[tuple[str, int | None]]:
    lines = api.get(f"/api/v1/deployments/{deployment_id}/log/").json()["lines"]
    return [(line["text"], line["server"]) for line in lines]


def test_a_migration_runs_once_per_deployment_and_is_reversed_once_by_the_rollback(
    alice_api, repo, project, sshd_factory, server_factory
):
    targets = [sshd_factory() for _ in range(3)]
    servers = [server_factory(project, target) for target in targets]
    base = f"/api/v1/projects/{project.slug}/commands/"
    reverse = alice_api.post(
        base,
        {"command": REVERSE, "stage": "after_rollback", "run_once": True},
        format="json",
    )
    assert reverse.status_code == 201, reverse.content
    migrate = alice_api.post(
        base,
        {"command": MIGRATE, "stage": "before_switch", "run_once": True, "description": "migrate"},
        format="json",
    )
    assert migrate.status_code == 201, migrate.content
    assert migrate.json()["run_once"] is True
    listed = alice_api.get(base).json()
    rows = listed["results"] if isinstance(listed, dict) else listed
    assert [(c["stage"], c["run_once"]) for c in rows] == [
        ("before_switch", True),
        ("after_rollback", True),
    ], "in the order they run; after-rollback last"

    every = [s.pk for s in servers]
    deployments = []
    for text in ("A", "B"):  # the repository holds A; then B
        if text == "B":
            repo.commit({"index.html": "B\n"}, "B")
        created = alice_api.post(
            f"/api/v1/projects/{project.slug}/deployments/", {"servers": every}, format="json"
        )
        assert created.status_code == 201, created.content
        deployments.append(_run(alice_api, created.json()["id"]))
    first, second = deployments
    assert [_lines(t, "migrated") for t in targets] == [
        [first["end_revision"], second["end_revision"]],
        [],
        [],
    ]
    assert [_lines(t, "reversed") for t in targets] == [[], [], []], "deployments never run them"
    log = _log(alice_api, second["id"])
    web1 = servers[0].pk
    assert ("migrating on web1", web1) in log
    assert ("Runs once, here on web1: the other servers skip it: migrate", web1) in log
    skipped = {
        server for text, server in log if text == "Skipped (run once: it ran on web1): migrate"
    }
    assert skipped == {servers[1].pk, servers[2].pk}

    rollback = alice_api.post(f"/api/v1/deployments/{second['id']}/rollback/", {}, format="json")
    assert rollback.status_code == 201, rollback.content
    _run(alice_api, rollback.json()["id"])

    reversed_lines = [line for t in targets for line in _lines(t, "reversed")]
    assert reversed_lines == [f"1 {second['end_revision']} {first['end_revision']}"]
    assert len(_lines(targets[0], "reversed")) == 1
    assert (targets[2].deploy_path / "current" / "index.html").read_text() == "A\n"
    assert [len(_lines(t, "migrated")) for t in targets] == [2, 0, 0], "no migration in a rollback"


def test_the_schema_describes_run_once_and_the_after_rollback_stage(alice_api):
    schema = alice_api.get("/api/schema/?format=json").json()
    components = schema["components"]["schemas"]
    command = components["Command"]["properties"]
    assert command["run_once"]["type"] == "boolean"
    assert "first server" in command["run_once"]["description"]
    stage = command["stage"]
    assert "after_rollback" in stage["description"]
    assert "after_rollback" in components[stage["allOf"][0]["$ref"].rsplit("/", 1)[1]]["enum"]


def test_run_once_must_be_a_boolean(alice_api, project):
    refused = alice_api.post(
        f"/api/v1/projects/{project.slug}/commands/",
        {"command": "migrate", "run_once": "sometimes"},
        format="json",
    )
    assert refused.status_code == 400
    assert "run_once" in refused.json()
