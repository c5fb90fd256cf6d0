"""Who may post to a webhook URL: signatures over the raw body, tokens, fail closed."""

from __future__ import annotations

import pytest
from django.test import Client

from builds.models import Deployment, WebhookDelivery, WebhookOutcome
from tests.webhooks import payloads

pytestmark = pytest.mark.django_db


def _nothing_queued():
    return not Deployment.objects.exists()


def test_it_queues_a_github_push_signed_with_the_secret(shop, make_server, post):
    web1 = make_server(shop, "web1")
    head = payloads.fake_sha("one")
    body = payloads.encode(payloads.github_push(after=head, commits=[(head, "Ship it")]))

    response = post(shop, body, **payloads.github_headers(body, shop.webhook_secret))

    assert response.status_code == 202, response.content
    assert response.json()["status"] == "queued"
    deployment = Deployment.objects.get()
    assert deployment.trigger == "webhook"
    assert deployment.revision == head and deployment.branch == "main"
    assert list(deployment.targets.values_list("server", flat=True)) == [web1.pk]
    assert response.json()["deployments"] == [deployment.pk]


def test_it_refuses_a_github_push_with_a_wrong_signature(shop, make_server, post):
    make_server(shop, "web1")
    body = payloads.encode(payloads.github_push())
    headers = payloads.github_headers(body, "not-the-secret")

    response = post(shop, body, **headers)

    assert response.status_code == 401
    assert response.json()["status"] == "rejected"
    assert _nothing_queued()


def test_it_refuses_a_body_changed_after_signing(shop, make_server, post):
    make_server(shop, "web1")
    body = payloads.encode(payloads.github_push(ref="refs/heads/main"))
    headers = payloads.github_headers(body, shop.webhook_secret)
    tampered = body.replace(b"refs/heads/main", b"refs/heads/prod")

    assert post(shop, tampered, **headers).status_code == 401
    assert _nothing_queued()


def test_it_refuses_a_github_push_without_a_signature(shop, make_server, post):
    make_server(shop, "web1")
    body = payloads.encode(payloads.github_push())
    headers = payloads.github_headers(body, shop.webhook_secret)
    del headers["HTTP_X_HUB_SIGNATURE_256"]

    response = post(shop, body, **headers)

    assert response.status_code == 401
    assert "X-Hub-Signature-256 is missing" in response.json()["reason"]
    assert _nothing_queued()


def test_it_refuses_signed_deliveries_when_the_project_has_no_secret(shop, make_server, post):
    make_server(shop, "web1")
    shop.webhook_secret = ""
    shop.save()
    body = payloads.encode(payloads.github_push())
    # Signed with the empty secret: still refused, there is nothing to verify against.
    response = post(shop, body, **payloads.github_headers(body, ""))

    assert response.status_code == 401
    assert _nothing_queued()


def test_it_records_a_rejected_delivery_without_anything_from_its_body(shop, make_server, post):
    make_server(shop, "web1")
    body = payloads.encode(payloads.github_push(commits=[(payloads.fake_sha("x"), "Secret plan")]))
    headers = payloads.github_headers(body, "wrong", delivery="d-1")

    post(shop, body, **headers)

    record = WebhookDelivery.objects.get()
    assert record.outcome == WebhookOutcome.REJECTED
    assert (record.provider, record.event, record.delivery_id) == ("github", "push", "d-1")
    assert record.ref == "" and record.head == "" and record.summary == []
    assert "Secret plan" not in record.reason


def test_a_forged_delivery_does_not_burn_the_id_of_the_real_one(shop, make_server, post):
    make_server(shop, "web1")
    body = payloads.encode(payloads.github_push())
    forged = payloads.github_headers(body, "wrong", delivery="d-1")
    real = payloads.github_headers(body, shop.webhook_secret, delivery="d-1")

    assert post(shop, body, **forged).status_code == 401
    response = post(shop, body, **real)

    assert response.json()["status"] == "queued"
    assert Deployment.objects.count() == 1


def test_it_compares_the_gitlab_token_with_the_secret(shop, make_server, post):
    make_server(shop, "web1")
    body = payloads.encode(payloads.gitlab_push())

    wrong = post(shop, body, **payloads.gitlab_headers(shop.webhook_secret + "x"))
    missing = post(shop, body, HTTP_X_GITLAB_EVENT="Push Hook")
    right = post(shop, body, **payloads.gitlab_headers(shop.webhook_secret))

    assert (wrong.status_code, missing.status_code) == (401, 401)
    assert right.status_code == 202 and right.json()["status"] == "queued"
    assert Deployment.objects.count() == 1


def test_it_verifies_a_bitbucket_signature(shop, make_server, post):
    make_server(shop, "web1")
    body = payloads.encode(payloads.bitbucket_push(payloads.bitbucket_change()))

    wrong = post(shop, body, **payloads.bitbucket_headers(body, "wrong"))
    right = post(shop, body, **payloads.bitbucket_headers(body, shop.webhook_secret))

    assert wrong.status_code == 401
    assert right.json()["status"] == "queued"


def test_it_detects_gitea_before_github_and_checks_its_own_signature(shop, make_server, post):
    make_server(shop, "web1")
    body = payloads.encode(payloads.gitea_push())
    headers = payloads.gitea_headers(body, shop.webhook_secret, delivery="g-1")

    response = post(shop, body, **headers)

    assert response.json()["status"] == "queued"
    record = WebhookDelivery.objects.get()
    assert (record.provider, record.delivery_id) == ("gitea", "g-1")
    # With only GitHub's signature valid, a Gitea delivery is still checked as Gitea.
    headers["HTTP_X_GITEA_SIGNATURE"] = "0" * 64
    headers["HTTP_X_GITHUB_DELIVERY"] = headers["HTTP_X_GITEA_DELIVERY"] = "g-2"
    assert post(shop, body, **headers).status_code == 401


def test_it_detects_forgejo_before_gitea(shop, make_server, post):
    make_server(shop, "web1")
    body = payloads.encode(payloads.gitea_push())

    response = post(shop, body, **payloads.gitea_headers(body, shop.webhook_secret, forgejo=True))

    assert response.json()["status"] == "queued"
    assert WebhookDelivery.objects.get().provider == "forgejo"


def test_custom_json_is_refused_without_a_token_when_the_project_has_a_secret(
    shop, make_server, post
):
    make_server(shop, "web1")
    body = payloads.encode({"payload": {"new_ref": "latest", "branch": "main"}})

    bare = post(shop, body)
    wrong = post(shop, body, HTTP_X_SLIPWAY_TOKEN=shop.webhook_secret + "x")
    empty = post(shop, body, HTTP_X_SLIPWAY_TOKEN="")

    assert (bare.status_code, wrong.status_code, empty.status_code) == (401, 401, 401)
    assert "X-Slipway-Token" in bare.json()["reason"]
    assert _nothing_queued()


def test_custom_json_is_accepted_with_the_token_or_a_signature(shop, make_server, post):
    make_server(shop, "web1")
    body = payloads.encode({"payload": {"new_ref": "latest", "branch": "main"}})

    by_token = post(shop, body, **payloads.custom_headers(shop.webhook_secret))
    signed = post(shop, body, **payloads.custom_headers(shop.webhook_secret, body=body))
    mis_signed = post(shop, body, **payloads.custom_headers("wrong", body=body))

    assert by_token.json()["status"] == "queued"
    assert signed.json()["status"] == "queued"
    assert mis_signed.status_code == 401
    assert WebhookDelivery.objects.filter(provider="custom", outcome="queued").count() == 2


def test_custom_json_is_authenticated_by_the_url_alone_without_a_secret(shop, make_server, post):
    make_server(shop, "web1")
    shop.webhook_secret = ""
    shop.save()
    sha = payloads.fake_sha("custom")
    body = payloads.encode({"payload": {"new_ref": sha, "branch": "main"}})

    response = post(shop, body)

    assert response.json()["status"] == "queued"
    assert WebhookDelivery.objects.get().provider == "custom"


def test_an_unknown_token_is_not_found(shop, make_server, client):
    make_server(shop, "web1")
    body = payloads.encode(payloads.github_push())
    headers = payloads.github_headers(body, shop.webhook_secret)

    response = client.post(
        "/hooks/not-a-token/", data=body, content_type="application/json", **headers
    )

    assert response.status_code == 404
    assert not WebhookDelivery.objects.exists() and _nothing_queued()


def test_it_answers_only_post(shop, client):
    assert client.get(shop.webhook_path).status_code == 405
    assert client.put(shop.webhook_path, data=b"{}").status_code == 405
    assert not WebhookDelivery.objects.exists()


def test_it_needs_no_csrf_token(shop, make_server):
    make_server(shop, "web1")
    body = payloads.encode(payloads.github_push())
    browserless = Client(enforce_csrf_checks=True)

    response = browserless.post(
        shop.webhook_path,
        data=body,
        content_type="application/json",
        **payloads.github_headers(body, shop.webhook_secret),
    )

    assert response.status_code == 202


def test_it_keeps_only_the_newest_rejected_deliveries(shop, post, monkeypatch):
    from builds import webhook_services

    monkeypatch.setattr(webhook_services, "KEEP_REJECTED_PER_PROJECT", 2)
    body = payloads.encode(payloads.github_push())
    for n in range(4):
        post(shop, body, **payloads.github_headers(body, "wrong", delivery=f"d-{n}"))

    kept = WebhookDelivery.objects.filter(outcome=WebhookOutcome.REJECTED)
    assert sorted(kept.values_list("delivery_id", flat=True)) == ["d-2", "d-3"]
