"""A project's integrations through the API: admins configure them, members see where reports
go and what was delivered, nobody ever reads back a token, and the token is encrypted at rest.
Bob is a viewer (then a deployer) on Alice's project; Charlie is no member."""

from __future__ import annotations

import pytest
from django.db import connection

from builds.integrations import integration_create
from projects.models import AuditEvent, DeliveryStatus, Integration, NotificationDelivery
from projects.secrets import project_secrets
from tests.api.conftest import make_deployer

pytestmark = pytest.mark.django_db

TOKEN = "ghp_secretTOKEN0123456789abcdefABCDEF"
# A public address literal: checked at save time without a DNS lookup, never connected to.
GHE = "https://1.1.1.1/api/v3"


@pytest.fixture(autouse=True)
def private_targets_refused(settings):
    settings.ALLOW_PRIVATE_NOTIFICATION_TARGETS = False


def integrations_url(project) -> str:
    return f"/api/v1/projects/{project.slug}/integrations/"


@pytest.fixture
def github(project, alice):
    return integration_create(
        project=project,
        actor=alice,
        kind="github",
        base_url=GHE,
        repository="acme/shop",
        token=TOKEN,
    )


def test_an_admin_adds_an_integration_and_never_reads_its_token_back(alice_api, alice, project):
    created = alice_api.post(
        integrations_url(project),
        {"kind": "sentry", "repository": "acme/shop", "token": TOKEN, "environment": "live"},
        format="json",
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["kind"] == "sentry" and body["base_url"] == "https://sentry.io"
    assert body["has_token"] is True and "token" not in body
    assert body["destination"] == "https://sentry.io"
    assert body["deliveries_url"].endswith(f"/integrations/{body['id']}/deliveries/")
    assert TOKEN not in created.content.decode()

    listed = alice_api.get(integrations_url(project))
    detail = alice_api.get(body["url"])
    for response in (listed, detail):
        assert response.status_code == 200 and TOKEN not in response.content.decode()
    event = AuditEvent.objects.get(action="integration.created")
    assert event.actor == alice and TOKEN not in str(event.detail)


def test_the_token_is_encrypted_at_rest(github):
    with connection.cursor() as cursor:
        cursor.execute("SELECT token FROM projects_integration WHERE id = %s", [github.pk])
        [stored] = cursor.fetchone()
    assert TOKEN not in stored and stored.startswith("gAAAA")
    assert Integration.objects.get(pk=github.pk).token == TOKEN


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"kind": "bitbucket"}, "kind", "is not a valid choice"),
        ({"base_url": "http://1.1.1.1/api/v3"}, "base_url", "must start with https://"),
        ({"base_url": "https://169.254.169.254/api/v3"}, "base_url", "169.254.169.254"),
        ({"repository": "just-a-name"}, "repository", "owner/repository"),
        ({"token": "two words"}, "token", "one word"),
        ({"environment": "$(reboot)"}, "environment", "letters, digits"),
    ],
)
def test_bad_input_gets_an_error_naming_the_field(alice_api, project, changes, field, message):
    data = {"kind": "github", "repository": "acme/shop", "token": TOKEN, **changes}
    response = alice_api.post(integrations_url(project), data, format="json")
    assert response.status_code == 400, response.content
    text = response.content.decode()
    assert field in response.json() and message in text, text
    assert TOKEN not in text
    assert not Integration.objects.exists()


def test_gitea_needs_its_address_and_a_token_is_required(alice_api, project):
    gitea = alice_api.post(
        integrations_url(project),
        {"kind": "gitea", "repository": "acme/shop", "token": TOKEN},
        format="json",
    )
    assert gitea.status_code == 400 and "base_url" in gitea.json()
    tokenless = alice_api.post(
        integrations_url(project), {"kind": "github", "repository": "acme/shop"}, format="json"
    )
    assert tokenless.status_code == 400 and "token" in tokenless.json()


def test_a_patch_without_a_token_keeps_it(alice_api, project, github):
    response = alice_api.patch(
        f"{integrations_url(project)}{github.pk}/",
        {"environment": "staging", "enabled": False},
        format="json",
    )
    assert response.status_code == 200, response.content
    github.refresh_from_db()
    assert github.token == TOKEN and github.environment == "staging" and not github.enabled


def test_members_read_integrations_but_only_admins_change_them(
    bob_api, charlie_api, project, github, bob
):
    listed = bob_api.get(integrations_url(project))
    assert listed.status_code == 200 and TOKEN not in listed.content.decode()
    assert listed.json()[0]["has_token"] is True
    make_deployer(project, bob)
    detail = f"{integrations_url(project)}{github.pk}/"
    assert bob_api.patch(detail, {"token": "stolen"}, format="json").status_code == 403
    assert bob_api.delete(detail).status_code == 403
    assert (
        bob_api.post(
            integrations_url(project),
            {"kind": "github", "repository": "a/b", "token": "x"},
            format="json",
        ).status_code
        == 403
    )
    for url in (integrations_url(project), detail, f"{detail}deliveries/"):
        assert charlie_api.get(url).status_code == 404
    github.refresh_from_db()
    assert github.token == TOKEN


def test_the_deliveries_list_shows_what_was_reported(alice_api, bob_api, project, github):
    NotificationDelivery.objects.create(
        integration=github,
        event="started",
        status=DeliveryStatus.FAILED,
        attempts=1,
        status_code=401,
        error="https://1.1.1.1 answered POST /api/v3/repos/acme/shop/statuses/… with HTTP 401",
    )
    for client in (alice_api, bob_api):
        response = client.get(f"{integrations_url(project)}{github.pk}/deliveries/")
        assert response.status_code == 200
        [delivery] = response.json()
        assert delivery["status"] == "failed" and delivery["status_code"] == 401
        assert delivery["html_url"].endswith(f"/projects/{project.slug}/")


def test_the_schema_documents_the_integrations(alice_api):
    schema = alice_api.get("/api/schema/?format=json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "/api/v1/projects/{slug}/integrations/" in paths
    assert "/api/v1/projects/{slug}/integrations/{id}/deliveries/" in paths


def test_the_token_is_one_of_the_secrets_masked_in_logs(project, github):
    assert TOKEN in project_secrets(project, [])


def test_changing_the_address_needs_the_token_again(alice_api, project, github):
    # Kept, the write-only token would go to the new address: any admin of the project
    # could point it at their own server and read it there.
    url = f"{integrations_url(project)}{github.pk}/"

    moved = alice_api.patch(url, {"base_url": "https://8.8.8.8/api/v3"}, format="json")

    assert moved.status_code == 400, moved.content
    assert "give the token again" in moved.json()["token"][0]
    github.refresh_from_db()
    assert github.base_url == GHE and github.token == TOKEN
    retyped = alice_api.patch(
        url, {"base_url": "https://8.8.8.8/api/v3", "token": "ghp_new"}, format="json"
    )
    assert retyped.status_code == 200, retyped.content
    same = alice_api.patch(url, {"base_url": "https://8.8.8.8/api/v3/"}, format="json")
    assert same.status_code == 200, same.content


@pytest.mark.parametrize("token", ['tok"en\\0123', "tok+en/01=", "tokén0123"])
def test_a_provider_repeating_the_token_in_another_form_gets_it_masked(project, alice, token):
    from builds.integrations import Client, _message_of

    gitea = integration_create(
        project=project,
        actor=alice,
        kind="gitea",
        base_url=GHE,
        repository="acme/shop",
        token=token,
    )
    client = Client(gitea, {})
    from urllib.parse import quote

    for echoed in (
        _message_of({"errors": {"token": token}}),
        _message_of({"errors": [token]}),
        f"bad token {quote(token, safe='')}",
        f"bad token {token}",
    ):
        shown = client._safe(echoed)
        assert "****" in shown and token not in shown, shown
        assert quote(token, safe="") not in shown and token.split('"')[0] + '\\"' not in shown
