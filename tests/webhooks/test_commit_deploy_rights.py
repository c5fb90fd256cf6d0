"""A [deploy: name] commit-message command is the pusher's request: it adds only servers the
pusher's deploy rights cover (docs/webhooks.md#commit-message-commands). Servers with
auto-deploy on are the project's own act and deploy whoever pushed."""

from __future__ import annotations

import pytest

from builds.models import Deployment
from projects.models import CommitDeploys, Role
from projects.services import member_add, member_update, project_update
from tests.webhooks import payloads

pytestmark = pytest.mark.django_db


def _github_push(post, project, message, *, email):
    head = payloads.fake_sha(message + email)
    data = payloads.github_push(after=head, commits=[(head, message)])
    data["pusher"] = {"name": "pusher-login", "email": email}
    body = payloads.encode(data)
    return post(project, body, **payloads.github_headers(body, project.webhook_secret)).json()


def _deployed() -> list[str]:
    return sorted(t.server.name for d in Deployment.objects.all() for t in d.targets.all())


@pytest.fixture
def bed(shop, alice, bob, make_server):
    """Bob, a deployer of Shop limited to staging; web1 auto-deploys; staging and production
    do not."""
    bob.email = "Bob@Example.com"
    bob.save()
    make_server(shop, "web1")
    make_server(shop, "staging", auto_deploy=False, environment="staging")
    make_server(shop, "production", auto_deploy=False, environment="production")
    membership = member_add(project=shop, actor=alice, username="bob", role=Role.DEPLOYER)
    member_update(membership=membership, actor=alice, deploy_environments=["staging"])
    return shop


def test_a_limited_member_cannot_push_a_deploy_to_a_server_outside_their_rights(bed, post):
    answer = _github_push(post, bed, "Ship [deploy: production]", email="bob@example.com")

    assert _deployed() == ["web1"]
    assert (
        "[deploy: production]: the pusher (bob@example.com, bob here) may not deploy to "
        "production: their deploy rights do not cover it"
    ) in answer["reason"]


def test_a_limited_member_may_push_a_deploy_to_a_server_within_their_rights(bed, post):
    _github_push(post, bed, "Ship [deploy: staging]", email="bob@example.com")

    assert _deployed() == ["staging", "web1"]


def test_a_viewer_cannot_push_a_deploy_by_command(bed, alice, charlie, post):
    charlie.email = "charlie@example.com"
    charlie.save()
    member_add(project=bed, actor=alice, username="charlie", role=Role.VIEWER)

    answer = _github_push(post, bed, "Ship [deploy: staging]", email="charlie@example.com")

    assert _deployed() == ["web1"]
    assert "[deploy: staging]: the pusher (charlie@example.com, charlie here)" in answer["reason"]


def test_an_unknown_pusher_is_honoured_only_when_the_project_takes_commands_from_anyone(
    bed, alice, post
):
    assert bed.commit_deploys == CommitDeploys.ANYONE
    _github_push(post, bed, "Ship [deploy: production]", email="someone@elsewhere.example")
    assert _deployed() == ["production", "web1"]

    Deployment.objects.all().delete()
    project_update(project=bed, actor=alice, commit_deploys=CommitDeploys.MEMBERS)
    answer = _github_push(
        post, bed, "Again [deploy: production]", email="someone@elsewhere.example"
    )

    assert _deployed() == ["web1"]
    assert (
        "[deploy: production]: the pusher (someone@elsewhere.example) is no member of Shop"
    ) in answer["reason"]


def test_gitlab_reports_the_pusher_by_user_email_and_a_redacted_one_is_no_one(bed, post):
    def push(email, message):
        head = payloads.fake_sha(message)
        data = payloads.gitlab_push(after=head, commits=[(head, message)])
        data["user_email"] = email
        body = payloads.encode(data)
        return post(bed, body, **payloads.gitlab_headers(bed.webhook_secret)).json()

    answer = push("bob@example.com", "Ship [deploy: production]")
    assert _deployed() == ["web1"]
    assert "the pusher (bob@example.com, bob here) may not deploy" in answer["reason"]

    Deployment.objects.all().delete()
    push("[REDACTED]", "Ship again [deploy: production]")  # unknown: "anyone" honours it
    assert _deployed() == ["production", "web1"]


@pytest.mark.parametrize(
    "lookalike",
    ["al\u0131ce@example.com", "AL\u0130CE@example.com", "alice@exampIe.com"],
)
def test_a_lookalike_email_is_not_taken_for_a_member(bed, alice, post, lookalike):
    """PostgreSQL's upper() folds a dotless i to I: Alice (an admin) must not be matched by a
    Git host account whose email only looks like hers."""
    alice.email = "alice@example.com"
    alice.save()
    project_update(project=bed, actor=alice, commit_deploys=CommitDeploys.MEMBERS)

    answer = _github_push(post, bed, "Ship [deploy: production]", email=lookalike)

    assert _deployed() == ["web1"]
    assert "is no member of" in answer["reason"]


def test_the_members_email_in_another_case_is_still_the_member(bed, alice, post):
    alice.email = "alice@example.com"
    alice.save()
    project_update(project=bed, actor=alice, commit_deploys=CommitDeploys.MEMBERS)

    _github_push(post, bed, "Ship [deploy: production]", email="ALICE@Example.COM")

    assert _deployed() == ["production", "web1"]


def test_a_blue_green_router_or_one_colour_is_not_deployed_by_name(bed, alice, post, make_server):
    """[deploy: lb1] would send the application to the router, [deploy: blue1] replace the
    live colour in place: a push never does either, nor does a command."""
    from servers.models import GroupMember, ServerGroup

    blue = make_server(bed, "blue1", auto_deploy=False)
    green = make_server(bed, "green1", auto_deploy=False)
    lb = make_server(bed, "lb1", auto_deploy=False)
    group = ServerGroup.objects.create(
        project=bed, name="bg", strategy="blue_green", router=lb, auto_deploy=False
    )
    GroupMember.objects.create(group=group, server=blue, position=0, colour="blue")
    GroupMember.objects.create(group=group, server=green, position=1, colour="green")

    answer = _github_push(post, bed, "Ship [deploy: lb1] [deploy: blue1]", email="x@y.example")

    assert _deployed() == ["web1"]
    assert "[deploy: lb1]: the server is a blue-green group's router" in answer["reason"]
    assert "[deploy: blue1]: the server belongs to blue-green group bg" in answer["reason"]
