"""Which servers and groups a push deploys to."""

from __future__ import annotations

import pytest

from builds.models import Deployment
from tests.webhooks import payloads

pytestmark = pytest.mark.django_db


def _push(post, project, branch="main", message="Change files"):
    head = payloads.fake_sha(branch + message)
    body = payloads.encode(
        payloads.github_push(ref=f"refs/heads/{branch}", after=head, commits=[(head, message)])
    )
    return post(project, body, **payloads.github_headers(body, project.webhook_secret)).json()


def _deployed(deployment):
    return [target.server.name for target in deployment.targets.order_by("position")]


def test_one_deployment_covers_every_auto_deploy_server_on_the_branch(shop, make_server, post):
    make_server(shop, "web1", position=0)
    make_server(shop, "web2", position=1)
    make_server(shop, "manual", auto_deploy=False)
    make_server(shop, "off", enabled=False)
    make_server(shop, "staging", branch="develop")

    answer = _push(post, shop)

    assert answer["status"] == "queued"
    deployment = Deployment.objects.get()
    assert _deployed(deployment) == ["web1", "web2"]
    assert deployment.group is None


def test_a_server_branch_overrides_the_project_branch(shop, make_server, post):
    make_server(shop, "web1")
    make_server(shop, "staging", branch="develop")

    _push(post, shop, branch="develop")

    assert _deployed(Deployment.objects.get()) == ["staging"]


def test_each_matching_group_gets_its_own_deployment(shop, make_server, make_group, post):
    web1, web2 = make_server(shop, "web1"), make_server(shop, "web2")
    worker = make_server(shop, "worker")
    make_server(shop, "lonely")
    make_group(shop, "Production", [web2, web1])
    make_group(shop, "Workers", [worker], branch="main")
    make_group(shop, "Canary", [web1], auto_deploy=False)
    make_group(shop, "Next", [web1], branch="next")

    _push(post, shop)

    by_group = {(d.group.name if d.group else None): _deployed(d) for d in Deployment.objects.all()}
    # Group members are left to their group (in the group's order); the rest share one.
    assert by_group == {"Production": ["web2", "web1"], "Workers": ["worker"], None: ["lonely"]}


def test_a_server_whose_host_key_is_not_trusted_is_skipped_with_the_reason(shop, make_server, post):
    make_server(shop, "web1")
    make_server(shop, "new", host_key_fingerprint="")

    answer = _push(post, shop)

    assert answer["status"] == "queued"
    assert _deployed(Deployment.objects.get()) == ["web1"]
    assert "Server new skipped: its host key is not trusted yet" in answer["reason"]


def test_a_delivery_whose_only_server_is_untrusted_queues_nothing(shop, make_server, post):
    make_server(shop, "new", host_key_fingerprint="")

    answer = _push(post, shop)

    assert answer["status"] == "ignored"
    assert "host key is not trusted" in answer["reason"]
    assert not Deployment.objects.exists()


def test_a_group_with_an_untrusted_member_is_refused_but_not_the_rest(
    shop, make_server, make_group, post
):
    web1, new = make_server(shop, "web1"), make_server(shop, "new", host_key_fingerprint="")
    make_server(shop, "other")
    make_group(shop, "Production", [web1, new])

    answer = _push(post, shop)

    assert answer["status"] == "queued"
    assert "Group Production: Server new: its host key is not trusted yet" in answer["reason"]
    # web1 is not deployed on its own either: a group is never deployed by halves.
    assert [_deployed(d) for d in Deployment.objects.all()] == [["other"]]


def test_an_empty_group_is_noted(shop, make_server, make_group, post):
    make_server(shop, "web1")
    make_group(shop, "Empty", [])

    answer = _push(post, shop)

    assert "Group Empty has no servers" in answer["reason"]
    assert answer["status"] == "queued"


def test_a_newer_push_supersedes_the_queued_deployment(shop, make_server, post):
    make_server(shop, "web1")

    first = _push(post, shop, message="one")
    second = _push(post, shop, message="two")

    older = Deployment.objects.get(pk=first["deployments"][0])
    newer = Deployment.objects.get(pk=second["deployments"][0])
    assert older.status == "cancelled" and f"#{newer.pk}" in older.error
    assert newer.status == "queued"


def test_a_push_deploys_a_blue_green_group_but_never_its_router(
    shop, make_server, make_group, post
):
    blue, green = make_server(shop, "blue1"), make_server(shop, "green1")
    router = make_server(shop, "lb1")
    make_server(shop, "web")
    make_group(shop, "Production", [blue, green], strategy="blue_green", router=router)

    _push(post, shop)

    by_group = {(d.group.name if d.group else None): _deployed(d) for d in Deployment.objects.all()}
    assert by_group == {"Production": ["blue1", "green1"], None: ["web"]}
