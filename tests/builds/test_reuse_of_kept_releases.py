"""The worker hands the engine the manifests of the releases a server keeps, so that a roll
forward after a rollback sends no file content; a release removed by ``keep_releases`` is
never among them. Real Git repositories, real sshd targets, the database."""

from __future__ import annotations

import pytest

from builds import services
from builds.engine.manifest import DeferredManifests
from builds.models import Deployment, Status
from builds.runner import server_spec
from builds.tasks import run_deployment
from servers.models import Release

pytestmark = pytest.mark.django_db(transaction=True)

BIG = "".join(f"row {n} of a page worth not sending twice\n" for n in range(3000))


def _run(deployment: Deployment) -> Deployment:
    run_deployment.apply(args=(deployment.pk,))
    deployment.refresh_from_db()
    assert deployment.status == Status.SUCCEEDED, deployment.error
    return deployment


@pytest.fixture
def bed(git_repo_factory, sshd_target, project_factory, server_factory, alice):
    repo = git_repo_factory()
    project = project_factory(repo)
    server = server_factory(project, sshd_target, keep_releases=2)

    def deploy(text: str) -> Deployment:
        repo.commit({"index.html": f"{text}\n", "page.html": f"{text}\n{BIG}"}, text)
        return _run(services.deployment_create(project=project, servers=[server], user=alice))

    def live() -> str:
        return Release.objects.get(server=server, live=True).name

    return server, deploy, live, alice


def _log(deployment: Deployment) -> str:
    return "\n".join(deployment.log_lines.values_list("text", flat=True))


def test_it_rolls_forward_after_a_rollback_without_sending_file_content(bed, sshd_target):
    server, deploy, live, alice = bed
    deploy("A")
    b = deploy("B")
    b_name = live()
    _run(services.deployment_rollback_server(server=server, user=alice))
    assert set(server_spec(server).kept_manifests) == {b_name}

    again = _run(
        services.deployment_create(
            project=server.project, servers=[server], user=alice, revision=b.end_revision
        )
    )

    # What the server was sent (its upload's figure, as the bench counts it).
    assert again.targets.get().bytes_total == 0
    assert "0 bytes to send (2 files" in _log(again)
    page = (sshd_target.deploy_path / "current" / "page.html").read_text()
    assert page == f"B\n{BIG}"


def test_a_release_removed_by_keep_releases_is_never_a_source(bed, sshd_target):
    server, deploy, live, _ = bed
    deploy("A")
    a_name = live()
    deploy("B")
    deploy("C")
    assert Release.objects.get(server=server, name=a_name).removed_at is not None
    assert a_name not in server_spec(server).kept_manifests

    again = deploy("A")

    assert again.targets.get().bytes_total > len(BIG)
    assert (sshd_target.deploy_path / "current" / "page.html").read_text() == f"A\n{BIG}"


def test_the_worker_reads_a_kept_manifest_only_when_the_engine_asks(bed):
    server, deploy, live, _ = bed
    deploy("A")
    a_name = live()
    deploy("B")
    kept = server_spec(server).kept_manifests
    assert isinstance(kept, DeferredManifests)
    assert list(kept) == [a_name]

    # What the database holds when the engine asks, not when the spec was made.
    Release.objects.filter(server=server, name=a_name).update(manifest={})
    assert kept.get(a_name) is None
