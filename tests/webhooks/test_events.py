"""What each kind of delivery does: pushes deploy, pings and tags and deletions do not,
a redelivery creates nothing, and every delivery is recorded without its payload."""

from __future__ import annotations

import json

import pytest

from builds.models import Deployment, WebhookDelivery, WebhookOutcome
from projects.models import AuditEvent
from tests.webhooks import payloads

pytestmark = pytest.mark.django_db


def _github(post, project, payload, **options):
    body = payloads.encode(payload)
    return post(project, body, **payloads.github_headers(body, project.webhook_secret, **options))


def test_a_github_ping_deploys_nothing(shop, make_server, post):
    make_server(shop, "web1")

    response = _github(post, shop, payloads.github_ping(), event="ping")

    assert response.status_code == 200
    assert response.json()["status"] == "ignored"
    record = WebhookDelivery.objects.get()
    assert (record.event, record.outcome) == ("ping", WebhookOutcome.IGNORED)
    assert "Ping" in record.reason
    assert not Deployment.objects.exists()


def test_an_event_other_than_push_deploys_nothing(shop, make_server, post):
    make_server(shop, "web1")
    response = _github(post, shop, {"action": "opened", "issue": {}}, event="issues")
    assert response.json()["status"] == "ignored"
    assert "issues" in response.json()["reason"]
    assert not Deployment.objects.exists()


def test_a_redelivery_is_a_duplicate_and_creates_nothing(shop, make_server, post):
    make_server(shop, "web1")
    payload = payloads.github_push()

    first = _github(post, shop, payload, delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958")
    again = _github(post, shop, payload, delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958")

    assert first.json()["status"] == "queued"
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate"
    assert again.json()["deployments"] == []
    assert Deployment.objects.count() == 1
    outcomes = list(WebhookDelivery.objects.order_by("id").values_list("outcome", flat=True))
    assert outcomes == [WebhookOutcome.QUEUED, WebhookOutcome.DUPLICATE]


def test_a_redelivered_ping_is_a_duplicate_too(shop, post):
    _github(post, shop, payloads.github_ping(), event="ping", delivery="p-1")
    assert _github(post, shop, payloads.github_ping(), event="ping", delivery="p-1").json()[
        "status"
    ] == ("duplicate")


def test_delivery_ids_are_per_project_and_provider(shop, make_server, post, alice):
    from projects.services import project_create

    other = project_create(owner=alice, name="Blog", repository_url="https://git.example.com/b")
    make_server(shop, "web1")
    make_server(other, "web1")
    payload = payloads.github_push()
    gitlab_payload = payloads.encode(payloads.gitlab_push())

    assert _github(post, shop, payload, delivery="same").json()["status"] == "queued"
    assert _github(post, other, payload, delivery="same").json()["status"] == "queued"
    gitlab = post(
        shop, gitlab_payload, **payloads.gitlab_headers(shop.webhook_secret, idempotency_key="same")
    )
    assert gitlab.json()["status"] == "queued"


def test_deliveries_without_an_id_are_never_duplicates(shop, make_server, post):
    make_server(shop, "web1")
    body = payloads.encode({"payload": {"new_ref": "latest", "branch": "main"}})
    token = payloads.custom_headers(shop.webhook_secret)
    assert post(shop, body, **token).json()["status"] == "queued"
    assert post(shop, body, **token).json()["status"] == "queued"
    assert post(shop, body, HTTP_X_DELIVERY_ID="c-1", **token).json()["status"] == "queued"
    assert post(shop, body, HTTP_X_DELIVERY_ID="c-1", **token).json()["status"] == "duplicate"


def test_a_deleted_branch_deploys_nothing(shop, make_server, post):
    make_server(shop, "web1")

    response = _github(post, shop, payloads.github_push(deleted=True))

    assert response.json()["status"] == "ignored"
    assert "refs/heads/main was deleted" in response.json()["reason"]
    assert not Deployment.objects.exists()


def test_a_deleted_branch_on_gitlab_deploys_nothing(shop, make_server, post):
    make_server(shop, "web1")
    body = payloads.encode(payloads.gitlab_push(after=payloads.ZEROS, commits=[]))

    response = post(shop, body, **payloads.gitlab_headers(shop.webhook_secret))

    assert response.json()["status"] == "ignored"
    assert "deleted" in response.json()["reason"]


def test_a_tag_push_deploys_nothing_and_says_why(shop, make_server, post):
    make_server(shop, "web1")

    response = _github(post, shop, payloads.github_push(ref="refs/tags/v1.2.0"))

    assert response.json()["status"] == "ignored"
    assert "Tag v1.2.0: no server deploys tags" in response.json()["reason"]
    assert WebhookDelivery.objects.get().ref == "refs/tags/v1.2.0"
    assert not Deployment.objects.exists()


def test_a_gitlab_tag_push_hook_deploys_nothing(shop, make_server, post):
    make_server(shop, "web1")
    body = payloads.encode(payloads.gitlab_push(ref="refs/tags/v1.2.0", tag=True))

    response = post(
        shop, body, **payloads.gitlab_headers(shop.webhook_secret, event="Tag Push Hook")
    )

    assert response.json()["status"] == "ignored"
    assert "Tag v1.2.0" in response.json()["reason"]


def test_a_gitlab_push_deploys_its_head_commit(shop, make_server, post):
    make_server(shop, "web1")
    older, head = payloads.fake_sha("older"), payloads.fake_sha("newer")
    body = payloads.encode(
        payloads.gitlab_push(commits=[(older, "First [skip deploy]"), (head, "Second\n")])
    )

    response = post(shop, body, **payloads.gitlab_headers(shop.webhook_secret, idempotency_key="k"))

    # Only the head commit's message counts: the older commit's [skip deploy] does not.
    assert response.json()["status"] == "queued"
    assert Deployment.objects.get().revision == head
    record = WebhookDelivery.objects.get()
    assert (record.provider, record.delivery_id, record.head) == ("gitlab", "k", head)


def test_a_gitlab_delivery_without_idempotency_key_uses_the_event_uuid(shop, post):
    body = payloads.encode(payloads.gitlab_push())
    headers = payloads.gitlab_headers(shop.webhook_secret)
    del headers["HTTP_IDEMPOTENCY_KEY"]
    headers["HTTP_X_GITLAB_EVENT_UUID"] = "e-1"

    post(shop, body, **headers)

    assert WebhookDelivery.objects.get().delivery_id == "e-1"


def test_a_gitlab_system_hook_deploys_nothing(shop, make_server, post):
    make_server(shop, "web1")
    body = payloads.encode({"event_name": "project_create"})
    response = post(shop, body, **payloads.gitlab_headers(shop.webhook_secret, event="System Hook"))
    assert response.json()["status"] == "ignored"


def test_a_bitbucket_push_deploys_each_changed_branch(shop, make_server, post):
    web = make_server(shop, "web1")
    staging = make_server(shop, "staging", branch="develop")
    main_head, develop_head = payloads.fake_sha("main"), payloads.fake_sha("develop")
    body = payloads.encode(
        payloads.bitbucket_push(
            payloads.bitbucket_change(name="main", head=main_head),
            payloads.bitbucket_change(name="develop", head=develop_head),
            payloads.bitbucket_change(name="v2.0", kind="tag"),
            payloads.bitbucket_change(name="old-feature", deleted=True),
        )
    )

    response = post(shop, body, **payloads.bitbucket_headers(body, shop.webhook_secret))

    assert response.json()["status"] == "queued"
    deployed = {d.targets.get().server_id: (d.revision, d.branch) for d in Deployment.objects.all()}
    assert deployed == {web.pk: (main_head, "main"), staging.pk: (develop_head, "develop")}
    reason = response.json()["reason"]
    assert "Tag v2.0" in reason and "refs/heads/old-feature was deleted" in reason
    assert set(WebhookDelivery.objects.get().deployments.all()) == set(Deployment.objects.all())


def test_a_bitbucket_ping_deploys_nothing(shop, post):
    body = b"{}"
    headers = payloads.bitbucket_headers(body, shop.webhook_secret, event="diagnostics:ping")
    assert post(shop, body, **headers).json()["status"] == "ignored"


def test_custom_json_with_latest_deploys_the_branch_tip(shop, make_server, post):
    make_server(shop, "web1")
    body = payloads.encode(
        {
            "payload": {
                "new_ref": "latest",
                "branch": "main",
                "email": "alice@example.com",
                "clone_url": "https://git.example.com/acme/shop.git",
            }
        }
    )

    response = post(shop, body, **payloads.custom_headers(shop.webhook_secret))

    assert response.json()["status"] == "queued"
    deployment = Deployment.objects.get()
    assert (deployment.revision, deployment.branch) == ("main", "main")


def test_custom_json_with_a_sha_deploys_that_commit(shop, make_server, post):
    make_server(shop, "web1")
    sha = payloads.fake_sha("pinned")
    body = payloads.encode({"payload": {"new_ref": sha.upper(), "branch": "main"}})

    post(shop, body, **payloads.custom_headers(shop.webhook_secret))

    deployment = Deployment.objects.get()
    assert (deployment.revision, deployment.branch) == (sha, "main")


@pytest.mark.parametrize(
    "payload",
    [
        {"new_ref": "main", "branch": "main"},
        {"new_ref": "--upload-pack=touch", "branch": "main"},
        {"new_ref": "latest"},
        {"new_ref": "latest", "branch": ""},
        "not an object",
    ],
)
def test_custom_json_needs_a_sha_or_latest_and_a_branch(shop, make_server, post, payload):
    make_server(shop, "web1")
    body = json.dumps({"payload": payload}).encode()
    response = post(shop, body, **payloads.custom_headers(shop.webhook_secret))
    assert response.status_code == 400
    assert not Deployment.objects.exists()


def test_a_push_to_a_branch_no_server_follows_deploys_nothing(shop, make_server, post):
    make_server(shop, "web1")

    response = _github(post, shop, payloads.github_push(ref="refs/heads/feature"))

    assert response.json()["status"] == "ignored"
    assert "No server or group deploys branch feature" in response.json()["reason"]


def test_it_keeps_commit_subjects_but_never_the_payload(shop, make_server, post):
    make_server(shop, "web1")
    commits = [
        (payloads.fake_sha("a"), "Fix checkout\n\nAPI_KEY=hunter2 in the body"),
        (payloads.fake_sha("b"), "Bump version"),
    ]

    _github(post, shop, payloads.github_push(commits=commits))

    record = WebhookDelivery.objects.get()
    assert record.summary == ["Fix checkout", "Bump version"]
    stored = json.dumps(list(WebhookDelivery.objects.values()), default=str)
    assert "hunter2" not in stored and "acme/shop" not in stored


def test_it_audits_the_deployments_a_delivery_created(shop, make_server, post):
    make_server(shop, "web1")

    _github(post, shop, payloads.github_push(), delivery="d-9")

    event = AuditEvent.objects.get(action="webhook.deployments_created")
    assert event.project == shop and event.actor is None
    assert event.detail["delivery_id"] == "d-9"
    assert event.detail["deployments"] == [Deployment.objects.get().pk]


def test_latest_per_project_keeps_the_newest_deliveries_of_each_project(shop, post, alice):
    from projects.services import project_create

    other = project_create(owner=alice, name="Blog", repository_url="https://git.example.com/b")
    for _ in range(4):
        _github(post, shop, payloads.github_ping(), event="ping")
    for _ in range(2):
        _github(post, other, payloads.github_ping(), event="ping")

    latest = list(WebhookDelivery.objects.latest_per_project(3))

    newest_shop = list(
        WebhookDelivery.objects.filter(project=shop).values_list("pk", flat=True)[:3]
    )
    assert [d.pk for d in latest if d.project_id == shop.pk] == newest_shop
    assert len([d for d in latest if d.project_id == other.pk]) == 2


def test_a_very_long_branch_name_is_recorded_shortened(shop, make_server, post):
    make_server(shop, "web1")
    body = payloads.encode({"payload": {"new_ref": "latest", "branch": "b" * 300}})

    response = post(shop, body, **payloads.custom_headers(shop.webhook_secret))

    assert response.json()["status"] == "ignored"
    assert len(WebhookDelivery.objects.get().ref) == 255


def test_a_push_without_a_head_is_malformed(shop, post):
    body = payloads.encode(payloads.github_push(after="", commits=[("", "x")]))
    response = post(shop, body, **payloads.github_headers(body, shop.webhook_secret))
    assert response.status_code == 400
