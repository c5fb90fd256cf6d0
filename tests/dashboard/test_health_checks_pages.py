"""A project's health checks from the dashboard: admins add, change and remove them through
servers.services (which checks them with servers.health.health_check_clean); the rules'
errors appear beside their field; other members read; outsiders find nothing."""

from __future__ import annotations

import pytest

from projects.models import AuditEvent
from servers.models import HealthCheck, HealthCheckKind, HealthCheckWhen
from tests.dashboard.support import field_errors, forms_posting_to

pytestmark = pytest.mark.django_db

HTTP_CHECK = {
    "kind": HealthCheckKind.HTTP,
    "when": HealthCheckWhen.AFTER_SWITCH,
    "url": "http://%hostname%/health",
    "expected_status": "200",
    "body_contains": "ok",
    "command": "",
    "timeout_seconds": "5",
    "retries": "3",
    "interval_seconds": "2",
}


@pytest.fixture
def check(project, server):
    check = HealthCheck.objects.create(
        project=project, kind=HealthCheckKind.COMMAND, command="test -f public/index.html"
    )
    check.servers.set([server])
    return check


def _list(slug: str) -> str:
    return f"/projects/{slug}/settings/health-checks/"


def test_an_admin_adds_an_http_check_for_some_servers(alice_client, alice, project, server):
    response = alice_client.post(_list(project.slug), {**HTTP_CHECK, "servers": [str(server.pk)]})
    assert response.status_code == 302
    check = HealthCheck.objects.get()
    assert (check.kind, check.url, check.expected_status, check.body_contains) == (
        "http",
        "http://%hostname%/health",
        200,
        "ok",
    )
    assert (check.timeout_seconds, check.retries, check.interval_seconds) == (5, 3, 2)
    assert list(check.servers.all()) == [server]
    event = AuditEvent.objects.get(action="health_check.created")
    assert event.actor == alice

    page = alice_client.get(_list(project.slug)).content.decode()
    assert "GET http://%hostname%/health" in page
    assert "3 \N{MULTIPLICATION SIGN} 5 s, 2 s apart" in page
    assert "web1" in page


def test_an_admin_changes_and_removes_a_check(alice_client, project, check, server):
    path = f"{_list(project.slug)}{check.pk}/"
    page = alice_client.get(path).content.decode()
    assert "test -f public/index.html" in page
    form = {
        **HTTP_CHECK,
        "kind": HealthCheckKind.COMMAND,
        "when": HealthCheckWhen.BEFORE_SWITCH,
        "url": "",
        "command": "php artisan health",
        "retries": "5",
    }
    assert alice_client.post(path, form).status_code == 302
    check.refresh_from_db()
    assert (check.command, check.when, check.retries) == (
        "php artisan health",
        HealthCheckWhen.BEFORE_SWITCH,
        5,
    )
    assert list(check.servers.all()) == []  # none ticked: every server
    response = alice_client.post(f"{path}delete/")
    assert response.status_code == 302 and not HealthCheck.objects.exists()

    audit = alice_client.get(f"/projects/{project.slug}/audit/").content.decode()
    assert "health_check.updated" in audit and "health_check.deleted" in audit


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"url": "ftp://example.com/health"}, "url", "An HTTP check needs an http://"),
        ({"url": ""}, "url", "An HTTP check needs an http://"),
        ({"when": HealthCheckWhen.BEFORE_SWITCH}, "when", "run it after the switch"),
        ({"kind": HealthCheckKind.COMMAND, "command": ""}, "command", "needs a command"),
        ({"expected_status": "42"}, "expected_status", "from 100 to 599"),
        ({"retries": "0"}, "retries", "must be a whole number from 1 to 100"),
        (
            {"retries": "100", "timeout_seconds": "600", "interval_seconds": "60"},
            "retries",
            "longer than a deployment may run",
        ),
    ],
)
def test_a_checks_error_shows_beside_its_field(alice_client, project, changes, field, message):
    response = alice_client.post(_list(project.slug), {**HTTP_CHECK, **changes})
    assert response.status_code == 200
    errors = field_errors(response.content.decode(), field)
    assert errors and message in errors[0], errors
    assert not HealthCheck.objects.exists()


def test_a_change_that_breaks_the_time_limit_is_refused_beside_retries(
    alice_client, project, check
):
    path = f"{_list(project.slug)}{check.pk}/"
    form = {
        **HTTP_CHECK,
        "kind": HealthCheckKind.COMMAND,
        "url": "",
        "command": check.command,
        "timeout_seconds": "600",
        "retries": "100",
    }
    errors = field_errors(alice_client.post(path, form).content.decode(), "retries")
    assert "SLIPWAY_DEPLOYMENT_TIME_LIMIT" in errors[0]
    check.refresh_from_db()
    assert check.retries == 3


def test_the_form_marks_the_fields_of_each_kind(alice_client, project):
    page = alice_client.get(_list(project.slug)).content.decode()
    assert 'name="url" data-shown-with="kind" data-shown-for="http"' in page
    assert 'data-shown-with="kind" data-shown-for="command"' in page
    assert "js/settings.js" in page


def test_the_settings_menu_links_the_page(alice_client, project):
    page = alice_client.get(f"/projects/{project.slug}/settings/").content.decode()
    assert f'href="{_list(project.slug)}"' in page


def test_a_viewer_reads_the_checks_but_changes_nothing(bob_client, project, check):
    listing = bob_client.get(_list(project.slug)).content.decode()
    assert "test -f public/index.html" in listing
    assert forms_posting_to(listing) == ["/logout/"]
    detail = bob_client.get(f"{_list(project.slug)}{check.pk}/").content.decode()
    assert forms_posting_to(detail) == ["/logout/"]

    assert bob_client.post(_list(project.slug), HTTP_CHECK).status_code == 403
    edit = f"{_list(project.slug)}{check.pk}/"
    assert bob_client.post(edit, {**HTTP_CHECK, "url": "http://x/"}).status_code == 403
    assert bob_client.post(f"{edit}delete/").status_code == 403
    check.refresh_from_db()
    assert HealthCheck.objects.count() == 1 and check.kind == HealthCheckKind.COMMAND


@pytest.mark.parametrize(("method", "suffix"), [("get", ""), ("post", ""), ("post", "delete/")])
def test_charlie_finds_no_check(charlie_client, project, check, method, suffix):
    for path in (_list(project.slug), f"{_list(project.slug)}{check.pk}/{suffix}"):
        assert getattr(charlie_client, method)(path, HTTP_CHECK).status_code == 404
    assert HealthCheck.objects.count() == 1
