"""Commands in the head commit's message: [skip deploy], [skip_build], [deploy: name]..."""

from __future__ import annotations

import pytest

from builds.models import Deployment
from builds.webhook_services import CommitCommands, commit_commands
from tests.webhooks import payloads

pytestmark = pytest.mark.django_db


def _push(post, project, message, branch="main"):
    head = payloads.fake_sha(message)
    body = payloads.encode(
        payloads.github_push(ref=f"refs/heads/{branch}", after=head, commits=[(head, message)])
    )
    return post(project, body, **payloads.github_headers(body, project.webhook_secret)).json()


@pytest.mark.parametrize(
    "message",
    [
        "Update docs [skip deploy]",
        "Update docs [SKIP DEPLOY]",
        "Update docs [deploy skip]",
        "Update docs [skip-deploy]",
        "Update docs\n\nNot ready yet [Skip_Deploy]",
    ],
)
def test_skip_deploy_deploys_nothing(shop, make_server, post, message):
    make_server(shop, "web1")

    answer = _push(post, shop, message)

    assert answer["status"] == "ignored"
    assert "[skip deploy]" in answer["reason"]
    assert not Deployment.objects.exists()


@pytest.mark.parametrize(
    ("message", "option"),
    [
        ("Fix checkout [skip_build]", "skip_build"),
        ("Fix checkout [Skip_Cache]", "skip_cache"),
        ("Fix checkout [from_scratch]", "full"),
        ("Fix checkout [CONFIG_ONLY]", "config_only"),
    ],
)
def test_an_option_command_sets_that_option(shop, make_server, post, message, option):
    make_server(shop, "web1")

    _push(post, shop, message)

    deployment = Deployment.objects.get()
    options = ("skip_build", "skip_cache", "full", "config_only")
    assert {name: getattr(deployment, name) for name in options} == {
        name: name == option for name in options
    }


def test_commands_combine(shop, make_server, post):
    make_server(shop, "web1")
    _push(post, shop, "Ship hotfix [from_scratch] [skip_cache]")
    deployment = Deployment.objects.get()
    assert deployment.full and deployment.skip_cache and not deployment.skip_build


def test_without_commands_a_deployment_has_no_options(shop, make_server, post):
    make_server(shop, "web1")
    _push(post, shop, "Plain change")
    deployment = Deployment.objects.get()
    assert not (
        deployment.full or deployment.skip_build or deployment.skip_cache or deployment.config_only
    )


def test_deploy_to_names_a_server_without_auto_deploy(shop, make_server, post):
    make_server(shop, "web1")
    make_server(shop, "Production", auto_deploy=False)

    _push(post, shop, "Release [deploy: production]")

    deployment = Deployment.objects.get()
    assert sorted(t.server.name for t in deployment.targets.all()) == ["Production", "web1"]


def test_deploy_to_names_a_group_with_spaces_in_quotes(shop, make_server, make_group, post):
    eu1 = make_server(shop, "eu1", auto_deploy=False)
    make_group(shop, "EU Production", [eu1], auto_deploy=False)

    answer = _push(post, shop, 'Release [deploy: "eu production"]')

    assert answer["status"] == "queued"
    deployment = Deployment.objects.get()
    assert deployment.group is not None and deployment.group.name == "EU Production"


def test_deploy_to_several_names(shop, make_server, post):
    make_server(shop, "a", auto_deploy=False)
    make_server(shop, "b", auto_deploy=False)
    _push(post, shop, "Both [deploy: a] [deploy: B]")
    assert sorted(t.server.name for t in Deployment.objects.get().targets.all()) == ["a", "b"]


def test_deploy_to_says_why_it_deployed_nothing(shop, make_server, post):
    make_server(shop, "off", enabled=False)
    make_server(shop, "staging", branch="develop", auto_deploy=False)

    answer = _push(post, shop, "Go [deploy: off] [deploy: staging] [deploy: nowhere]")

    assert answer["status"] == "ignored"
    reason = answer["reason"]
    assert "[deploy: off]: the server is disabled" in reason
    assert "[deploy: staging]: the server deploys branch develop, not main" in reason
    assert "[deploy: nowhere]: no server or group has this name" in reason
    assert not Deployment.objects.exists()


def test_skip_deploy_wins_over_deploy_to(shop, make_server, post):
    make_server(shop, "Production", auto_deploy=False)
    assert _push(post, shop, "[deploy: production] [skip deploy]")["status"] == "ignored"
    assert not Deployment.objects.exists()


def test_commands_are_read_from_bitbucket_and_gitlab_messages(shop, make_server, post):
    make_server(shop, "web1")
    bitbucket = payloads.encode(
        payloads.bitbucket_push(payloads.bitbucket_change(message="Quick fix [skip_build]\n"))
    )
    post(shop, bitbucket, **payloads.bitbucket_headers(bitbucket, shop.webhook_secret))
    gitlab = payloads.encode(
        payloads.gitlab_push(commits=[(payloads.fake_sha("gl"), "[config_only]")])
    )
    post(shop, gitlab, **payloads.gitlab_headers(shop.webhook_secret))

    first, second = Deployment.objects.order_by("id")
    assert first.skip_build and not first.config_only
    assert second.config_only and not second.skip_build


def test_commit_commands_parse_a_message():
    assert commit_commands("Nothing special") == CommitCommands()
    assert commit_commands('x [deploy: "EU Production"] [deploy:web1 ]').deploy_to == (
        "EU Production",
        "web1",
    )
    # [deploy skip] is the skip command, not a server named "skip".
    assert commit_commands("[deploy skip]") == CommitCommands(skip=True)
