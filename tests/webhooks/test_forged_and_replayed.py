"""A project with a webhook secret accepts only correctly signed deliveries, whatever headers
the sender leaves out or swaps, and a signed body replayed under a new id deploys nothing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from builds.models import Deployment, WebhookDelivery, WebhookOutcome
from tests.webhooks import payloads

pytestmark = pytest.mark.django_db

# Every header that carries a credential in any provider's scheme.
CREDENTIAL_HEADERS = (
    "HTTP_X_HUB_SIGNATURE_256",
    "HTTP_X_HUB_SIGNATURE",
    "HTTP_X_GITEA_SIGNATURE",
    "HTTP_X_GOGS_SIGNATURE",
    "HTTP_X_FORGEJO_SIGNATURE",
    "HTTP_X_GITLAB_TOKEN",
    "HTTP_X_SLIPWAY_TOKEN",
    "HTTP_X_SLIPWAY_SIGNATURE",
)


@dataclass(frozen=True)
class Provider:
    name: str
    body: Callable[[], bytes]
    # (body, secret, delivery id) -> the headers the provider sends.
    headers: Callable[[bytes, str, str], dict[str, Any]]


def _gitlab_headers(body: bytes, secret: str, delivery: str) -> dict[str, Any]:
    return payloads.gitlab_headers(secret, idempotency_key=delivery)


PROVIDERS = [
    Provider(
        "github",
        lambda: payloads.encode(payloads.github_push()),
        lambda body, secret, delivery: payloads.github_headers(body, secret, delivery=delivery),
    ),
    Provider("gitlab", lambda: payloads.encode(payloads.gitlab_push()), _gitlab_headers),
    Provider(
        "bitbucket",
        lambda: payloads.encode(payloads.bitbucket_push(payloads.bitbucket_change())),
        lambda body, secret, delivery: payloads.bitbucket_headers(
            body, secret, request_uuid=delivery
        ),
    ),
    Provider(
        "gitea",
        lambda: payloads.encode(payloads.gitea_push()),
        lambda body, secret, delivery: payloads.gitea_headers(body, secret, delivery=delivery),
    ),
    Provider(
        "forgejo",
        lambda: payloads.encode(payloads.gitea_push()),
        lambda body, secret, delivery: payloads.gitea_headers(
            body, secret, forgejo=True, delivery=delivery
        ),
    ),
    Provider(
        "custom",
        lambda: payloads.encode(
            {"payload": {"new_ref": payloads.fake_sha("c"), "branch": "main"}, "id": "run-7"}
        ),
        lambda body, secret, delivery: payloads.custom_headers(
            secret, body=body, delivery=delivery
        ),
    ),
]
BY_NAME = {provider.name: provider for provider in PROVIDERS}


def _without_credentials(headers: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in headers.items() if name not in CREDENTIAL_HEADERS}


def _only_credentials(headers: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in headers.items() if name in CREDENTIAL_HEADERS}


@pytest.fixture
def web1(shop, make_server):
    return make_server(shop, "web1")


@pytest.mark.parametrize("provider", PROVIDERS, ids=lambda p: p.name)
def test_a_delivery_without_its_credentials_is_refused(shop, web1, post, provider):
    body = provider.body()
    headers = provider.headers(body, shop.webhook_secret, "d-1")

    response = post(shop, body, **_without_credentials(headers))

    assert response.status_code == 401, response.content
    assert not Deployment.objects.exists()


@pytest.mark.parametrize("provider", PROVIDERS, ids=lambda p: p.name)
def test_a_delivery_stripped_of_every_provider_header_is_refused_as_custom_json(
    shop, web1, post, provider
):
    """With no header left to detect the provider by, the request is custom JSON: it still
    needs the secret."""
    body = provider.body()

    response = post(shop, body)

    assert response.status_code == 401
    record = WebhookDelivery.objects.get()
    assert (record.provider, record.outcome) == ("custom", WebhookOutcome.REJECTED)
    assert not Deployment.objects.exists()


@pytest.mark.parametrize("provider", PROVIDERS, ids=lambda p: p.name)
@pytest.mark.parametrize("pretending", ["github", "gitlab", "bitbucket", "gitea", "custom"])
def test_a_delivery_under_another_providers_headers_still_needs_the_secret(
    shop, web1, post, provider, pretending
):
    body = provider.body()
    # The other provider's headers, made with a guessed secret.
    headers = BY_NAME[pretending].headers(body, "guessed", "d-1")

    response = post(shop, body, **headers)

    assert response.status_code == 401
    assert not Deployment.objects.exists()


@pytest.mark.parametrize("provider", PROVIDERS, ids=lambda p: p.name)
def test_a_valid_signature_beside_a_wrong_credential_is_refused(shop, web1, post, provider):
    body = provider.body()
    headers = provider.headers(body, shop.webhook_secret, "d-1")
    extra = "HTTP_X_GITLAB_TOKEN" if provider.name != "gitlab" else "HTTP_X_HUB_SIGNATURE_256"
    headers[extra] = "sha256=" + "0" * 64

    response = post(shop, body, **headers)

    assert response.status_code == 401
    assert not Deployment.objects.exists()


@pytest.mark.parametrize("provider", PROVIDERS, ids=lambda p: p.name)
def test_a_signed_body_replayed_under_a_new_delivery_id_deploys_nothing_new(
    shop, web1, post, provider
):
    body = provider.body()
    first = post(shop, body, **provider.headers(body, shop.webhook_secret, "d-1"))
    assert first.json()["status"] == "queued", first.content

    replay = post(shop, body, **provider.headers(body, shop.webhook_secret, "d-2"))

    assert replay.status_code == 200
    assert replay.json()["status"] == "duplicate"
    assert replay.json()["deployments"] == []
    assert Deployment.objects.count() == 1
    record = WebhookDelivery.objects.get(delivery_id="d-2")
    assert record.outcome == WebhookOutcome.DUPLICATE
    assert "replay" in record.reason


@pytest.mark.parametrize("provider", PROVIDERS, ids=lambda p: p.name)
def test_a_captured_signature_replayed_with_swapped_headers_deploys_nothing_new(
    shop, web1, post, provider
):
    """The attacker has the body and its credential headers, not the secret: they keep the
    credentials and dress the request as another provider, under a new delivery id."""
    body = provider.body()
    captured = provider.headers(body, shop.webhook_secret, "d-1")
    assert post(shop, body, **captured).json()["status"] == "queued"
    disguise = "custom" if provider.name != "custom" else "github"
    disguised = _without_credentials(BY_NAME[disguise].headers(body, "", "d-2"))

    replay = post(shop, body, **disguised, **_only_credentials(captured))

    assert replay.json()["status"] in ("duplicate", "rejected"), replay.content
    assert Deployment.objects.count() == 1


def test_the_same_bearer_token_custom_json_twice_deploys_twice(shop, web1, post):
    """Without a signature the body proves nothing, so "deploy latest" may be sent again."""
    body = payloads.encode({"payload": {"new_ref": "latest", "branch": "main"}})
    token = payloads.custom_headers(shop.webhook_secret)

    statuses = [post(shop, body, **token).json()["status"] for _ in range(2)]

    assert statuses == ["queued", "queued"]
    assert not WebhookDelivery.objects.exclude(body_digest="").exists()


def test_a_rejected_replay_does_not_claim_the_body(shop, web1, post):
    body = payloads.encode(payloads.github_push())
    forged = post(shop, body, **payloads.github_headers(body, "wrong", delivery="d-1"))
    real = post(shop, body, **payloads.github_headers(body, shop.webhook_secret, delivery="d-2"))

    assert forged.status_code == 401
    assert real.json()["status"] == "queued"
