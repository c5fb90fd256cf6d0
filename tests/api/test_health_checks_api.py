"""A project's health checks through the API: members read them, admins change them, and
what the engine could not run (or run in time) is refused naming the field."""

from __future__ import annotations

import pytest
from django.conf import settings

from projects.models import AuditEvent
from servers.models import HealthCheck, Server
from tests.api.conftest import make_deployer

pytestmark = pytest.mark.django_db


@pytest.fixture
def servers(project):
    return [
        Server.objects.create(
            project=project, name=name, hostname=f"{name}.example", username="u", deploy_path="/srv"
        )
        for name in ("web1", "web2")
    ]


def checks_url(project) -> str:
    return f"/api/v1/projects/{project.slug}/health-checks/"


HTTP_CHECK = {
    "kind": "http",
    "url": "http://%hostname%/health",
    "expected_status": 200,
    "body_contains": "ok",
    "timeout_seconds": 5,
    "retries": 3,
    "interval_seconds": 2,
}


def test_an_admin_adds_reads_changes_and_removes_a_health_check(alice_api, alice, project, servers):
    created = alice_api.post(
        checks_url(project), {**HTTP_CHECK, "servers": [servers[1].pk]}, format="json"
    )
    assert created.status_code == 201, created.content
    body = created.json()
    for field, value in HTTP_CHECK.items():
        assert body[field] == value
    assert body["when"] == "after_switch"
    assert body["servers"] == [servers[1].pk]
    assert body["command"] == ""
    # `url` is the address it checks; its own address in the API is `api_url`.
    assert body["api_url"] == settings.BASE_URL + f"{checks_url(project)}{body['id']}/"
    assert body["html_url"] == settings.BASE_URL + f"/projects/{project.slug}/"

    assert alice_api.get(checks_url(project)).json() == [body]
    changed = alice_api.patch(body["api_url"], {"retries": 5, "servers": []}, format="json")
    assert changed.status_code == 200, changed.content
    assert changed.json()["retries"] == 5 and changed.json()["servers"] == []
    assert changed.json()["url"] == HTTP_CHECK["url"]
    assert alice_api.get(body["api_url"]).json() == changed.json()
    assert alice_api.delete(body["api_url"]).status_code == 204
    assert alice_api.get(body["api_url"]).status_code == 404
    assert not HealthCheck.objects.exists()

    events = list(
        AuditEvent.objects.filter(project=project, actor=alice, action__startswith="health_check.")
        .order_by("id")
        .values_list("action", "detail")
    )
    assert [action for action, _ in events] == [
        "health_check.created",
        "health_check.updated",
        "health_check.deleted",
    ]
    assert events[1][1]["fields"] == ["retries", "servers"]


def test_a_command_check_runs_before_the_switch(alice_api, project):
    response = alice_api.post(
        checks_url(project),
        {"kind": "command", "command": "php artisan health", "when": "before_switch"},
        format="json",
    )
    assert response.status_code == 201, response.content
    check = HealthCheck.objects.get()
    assert (check.kind, check.when, check.command) == (
        "command",
        "before_switch",
        "php artisan health",
    )
    assert (check.timeout_seconds, check.retries, check.interval_seconds) == (5, 3, 5)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"kind": "ftp"}, "kind"),
        ({"when": "later"}, "when"),
        ({"url": ""}, "url"),
        ({"url": "ftp://example.com/health"}, "url"),
        ({"expected_status": 99}, "expected_status"),
        ({"expected_status": 600}, "expected_status"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"retries": 0}, "retries"),
        ({"interval_seconds": -1}, "interval_seconds"),
        # 100 attempts of up to 5 s, 60 s apart: longer than a deployment may run.
        ({"retries": 100, "interval_seconds": 60}, "retries"),
        ({"kind": "command", "command": "   "}, "command"),
        ({"servers": [999999]}, "servers"),
    ],
)
def test_it_names_the_field_it_refuses(alice_api, project, data, field):
    response = alice_api.post(checks_url(project), {**HTTP_CHECK, **data}, format="json")
    assert response.status_code == 400, response.content
    assert list(response.json()) == [field]
    assert not HealthCheck.objects.exists()


def test_a_change_is_checked_with_the_checks_other_fields(alice_api, project):
    created = alice_api.post(
        checks_url(project), {"kind": "command", "command": "true"}, format="json"
    ).json()
    # An HTTP check needs a URL, which this command check never had.
    refused = alice_api.patch(created["api_url"], {"kind": "http"}, format="json")
    assert refused.status_code == 400 and list(refused.json()) == ["url"]
    too_long = alice_api.patch(
        created["api_url"], {"retries": 100, "interval_seconds": 60}, format="json"
    )
    assert too_long.status_code == 400 and list(too_long.json()) == ["retries"]
    assert HealthCheck.objects.get().kind == "command"


def test_it_refuses_another_projects_server(alice_api, project, project_factory, repo, charlie):
    other = project_factory(repo, owner=charlie, name="Charlie's")
    theirs = Server.objects.create(
        project=other, name="blog1", hostname="b.example", username="u", deploy_path="/srv"
    )
    response = alice_api.post(
        checks_url(project), {**HTTP_CHECK, "servers": [theirs.pk]}, format="json"
    )
    assert response.status_code == 400 and list(response.json()) == ["servers"]


def test_members_read_health_checks_but_only_admins_change_them(alice_api, bob_api, bob, project):
    created = alice_api.post(checks_url(project), HTTP_CHECK, format="json").json()
    assert bob_api.get(checks_url(project)).json() == [created]
    assert bob_api.get(created["api_url"]).json() == created
    for role in ("viewer", "deployer"):
        if role == "deployer":
            make_deployer(project, bob)
        assert bob_api.post(checks_url(project), HTTP_CHECK, format="json").status_code == 403
        assert bob_api.patch(created["api_url"], {"retries": 1}, format="json").status_code == 403
        assert bob_api.delete(created["api_url"]).status_code == 403
    assert HealthCheck.objects.get().retries == 3


def test_someone_outside_the_project_finds_no_health_check(alice_api, charlie_api, project):
    created = alice_api.post(checks_url(project), HTTP_CHECK, format="json").json()
    assert charlie_api.get(checks_url(project)).status_code == 404
    assert charlie_api.post(checks_url(project), HTTP_CHECK, format="json").status_code == 404
    assert charlie_api.get(created["api_url"]).status_code == 404
    assert charlie_api.patch(created["api_url"], {"retries": 1}, format="json").status_code == 404
    assert charlie_api.delete(created["api_url"]).status_code == 404
    assert HealthCheck.objects.exists()


def test_a_password_in_a_check_url_is_never_shown_and_kept_when_sent_back_masked(
    alice_api, bob_api, alice_client, project, servers
):
    created = alice_api.post(
        checks_url(project),
        {**HTTP_CHECK, "url": "https://monitor:s3cr3t-pass@%hostname%/health"},
        format="json",
    )
    assert created.status_code == 201, created.json()
    check = HealthCheck.objects.get()
    shown = "https://monitor:***@%hostname%/health"

    assert created.json()["url"] == shown
    assert bob_api.get(checks_url(project)).json()[0]["url"] == shown
    page = alice_client.get(f"/projects/{project.slug}/settings/health-checks/").content.decode()
    edit = alice_client.get(
        f"/projects/{project.slug}/settings/health-checks/{check.pk}/"
    ).content.decode()
    assert "s3cr3t-pass" not in page + edit and "monitor:***@" in page + edit

    # The masked URL sent back (an edit of another field) keeps the stored password.
    alice_api.patch(
        f"{checks_url(project)}{check.pk}/", {"url": shown, "retries": 4}, format="json"
    )
    check.refresh_from_db()
    assert (check.url, check.retries) == ("https://monitor:s3cr3t-pass@%hostname%/health", 4)
