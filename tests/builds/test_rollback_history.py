"""A plain rollback goes back along each server's history of live switches, and says where
it goes before anything happens: real Git repositories, real sshd targets, the real API."""

from __future__ import annotations

import shutil

import pytest
from django.utils import timezone

from builds import services
from builds.models import Deployment, Status
from builds.tasks import run_deployment
from servers.models import Release, rollback_target
from tests.api.conftest import client_for

pytestmark = pytest.mark.django_db(transaction=True)


def _run(deployment: Deployment) -> Deployment:
    run_deployment.apply(args=(deployment.pk,))
    deployment.refresh_from_db()
    assert deployment.status == Status.SUCCEEDED, deployment.error
    return deployment


@pytest.fixture
def bed(git_repo_factory, sshd_target, project_factory, server_factory, alice):
    repo = git_repo_factory()
    project = project_factory(repo)
    server = server_factory(project, sshd_target)

    def deploy(text: str) -> str:
        """Commit ``text`` as index.html, deploy it, and give the new live release's name."""
        repo.commit({"index.html": f"{text}\n"}, text)
        _run(services.deployment_create(project=project, servers=[server], user=alice))
        return Release.objects.get(server=server, live=True).name

    def roll_back() -> str:
        _run(services.deployment_rollback_server(server=server, user=alice))
        return Release.objects.get(server=server, live=True).name

    def live_text() -> str:
        return (sshd_target.deploy_path / "current" / "index.html").read_text().strip()

    return project, server, deploy, roll_back, live_text


def test_it_rolls_back_to_the_release_live_before_not_the_newest_older_one(bed, alice):
    project, server, deploy, roll_back, live_text = bed
    a = deploy("A")
    b = deploy("B")
    assert roll_back() == a and live_text() == "A"
    b_again = deploy("B")
    assert b_again != b, "a new deployment makes a new release"
    api = client_for(alice)
    answer = api.get(f"/api/v1/projects/{project.slug}/servers/{server.pk}/").json()
    assert answer["rollback_target"]["name"] == a, "said before anything happens"
    assert answer["rollback_target"]["replaces"] == b_again
    assert roll_back() == a and live_text() == "A", "not B's older release, the same code"


def test_it_pops_one_release_at_a_time_and_stops_at_the_first(bed):
    _, server, deploy, roll_back, live_text = bed
    a, b = deploy("A"), deploy("B")
    deploy("C")
    assert roll_back() == b and live_text() == "B"
    assert roll_back() == a and live_text() == "A"
    with pytest.raises(services.DeploymentRefused, match="no earlier release"):
        services.deployment_rollback_server(server=server, user=None)


def test_it_skips_a_release_no_longer_on_the_server(bed, sshd_target):
    _, server, deploy, roll_back, live_text = bed
    a, b = deploy("A"), deploy("B")
    deploy("C")
    shutil.rmtree(sshd_target.deploy_path / "releases" / b)
    Release.objects.filter(server=server, name=b).update(removed_at=timezone.now())
    target = rollback_target(server)
    assert target is not None and target.name == a
    assert roll_back() == a and live_text() == "A"


def test_releases_from_before_the_history_go_back_by_date(bed):
    _, server, deploy, roll_back, live_text = bed
    a, b = deploy("A"), deploy("B")
    deploy("C")
    Release.objects.filter(server=server).update(previous=None)
    assert roll_back() == b and live_text() == "B"
    assert roll_back() == a and live_text() == "A"


def test_undoing_a_deployment_says_where_each_server_goes(bed, alice):
    project, server, deploy, _, live_text = bed
    a = deploy("A")
    deploy("B")
    second = Deployment.objects.filter(project=project).latest("created_at")
    api = client_for(alice)
    answer = api.get(f"/api/v1/deployments/{second.pk}/").json()
    assert answer["rollback_targets"] == [
        {
            "server": server.pk,
            "server_name": "web1",
            "release": a,
            "revision": Release.objects.get(name=a).revision,
            "replaces": Release.objects.get(server=server, live=True).name,
        }
    ]
    page = client_for(alice)  # the page: a session, not a token
    page.force_login(alice)
    html = page.get(f"/projects/{project.slug}/deployments/{second.pk}/").content.decode()
    assert f"web1: current → releases/{a} ({Release.objects.get(name=a).revision[:7]})" in html
    _run(services.deployment_rollback(deployment=second, user=alice))
    assert live_text() == "A"


def test_the_server_page_names_the_release_a_rollback_puts_live(bed, alice):
    project, server, deploy, _, _ = bed
    a = deploy("A")
    deploy("B")
    page = client_for(alice)
    page.force_login(alice)
    html = page.get(f"/projects/{project.slug}/servers/{server.pk}/").content.decode()
    revision = Release.objects.get(name=a).revision[:7]
    assert f"Roll web1 back: current → releases/{a} ({revision})" in html
    assert f'id="rollback-target">releases/{a}<' in html
