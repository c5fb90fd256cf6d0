"""Attack probes on promotions."""

from __future__ import annotations

import os

import pytest

from builds import services
from builds.artefacts import project_store
from builds.models import Deployment, Kind, Status
from tests.api.conftest import client_for
from tests.builds.test_promote_artefacts import STAMP, _live, _run, estate  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_server_named_twice_is_not_a_500(estate, alice):  # noqa: F811
    source = estate["source"]
    answer = client_for(alice).post(
        f"/api/v1/deployments/{source.pk}/promotions/", {"to": "prod1, prod1"}, format="json"
    )
    assert answer.status_code == 201, answer.content
    promotion = _run(Deployment.objects.get(pk=answer.json()["id"]))
    assert promotion.status == Status.SUCCEEDED, promotion.error
    assert promotion.targets.count() == 1


def test_another_projects_server_and_a_failed_source(
    estate,  # noqa: F811
    alice,
    project_factory,
    git_repo_factory,
    server_factory,
    sshd_factory,
):
    source = estate["source"]
    repo = git_repo_factory("other")
    repo.commit({"a.txt": "a"}, "a")
    other = project_factory(repo, name="Other")
    theirs = server_factory(other, sshd_factory(), name="theirs", environment="elsewhere")
    answer = client_for(alice).post(
        f"/api/v1/deployments/{source.pk}/promotions/", {"to": "theirs"}, format="json"
    )
    assert answer.status_code == 400, answer.content
    answer = client_for(alice).post(
        f"/api/v1/deployments/{source.pk}/promotions/", {"to": "elsewhere"}, format="json"
    )
    assert answer.status_code == 400, answer.content
    assert theirs.targets.count() == 0


@pytest.mark.parametrize("how", ["symlink", "delete", "manifest_symlink", "fifo", "dir"])
def test_a_tampered_store_is_refused(estate, alice, how, tmp_path):  # noqa: F811
    source, targets = estate["source"], estate["targets"]
    store = project_store(estate["project"].pk)
    digest = source.artefact.digest
    manifest = store.manifest(digest)
    victim = store.object_path(manifest["index.html"].digest)
    if how == "symlink":
        outside = tmp_path / "evil"
        outside.write_text("<h1>evil</h1>\n")
        victim.unlink()
        victim.symlink_to(outside)
    elif how == "delete":
        victim.unlink()
    elif how == "fifo":
        victim.unlink()
        os.mkfifo(victim)
    elif how == "dir":
        victim.unlink()
        victim.mkdir()
    else:
        path = store.manifest_path(digest)
        copy = tmp_path / "m.json"
        copy.write_bytes(path.read_bytes().replace(b"index.html", b"../../../../tmp/x.html"))
        path.unlink()
        path.symlink_to(copy)
    promotion = _run(
        services.artefact_promote(source=source, servers=[estate["production"]], user=alice)
    )
    assert promotion.status == Status.FAILED
    assert promotion.error_code in ("artefact_corrupt", "artefact_missing"), (
        promotion.error_code,
        promotion.error,
    )
    assert not (targets["production"].deploy_path / "releases").exists()


def test_two_promotions_at_once(estate, alice):  # noqa: F811
    source = estate["source"]
    a = services.artefact_promote(source=source, servers=[estate["production"]], user=alice)
    b = services.artefact_promote(source=source, servers=[estate["production"]], user=alice)
    a, b = _run(a), _run(b)
    assert b.status == Status.SUCCEEDED, b.error
    assert (_live(estate["targets"]["production"]) / "index.html").exists()
    assert Deployment.objects.filter(kind=Kind.PROMOTE).count() == 2


def test_a_config_only_deployment_keeps_no_build_output_to_promote(estate, alice):  # noqa: F811
    """Staging kept its files and took only its config: the build it ran meanwhile is not
    what staging was tested with, so it is not promoted."""
    estate["repo"].commit({"index.html": "<h1>v2</h1>\n"}, "v2")
    config_only = _run(
        services.deployment_create(
            project=estate["project"], servers=[estate["staging"]], user=alice, config_only=True
        )
    )
    assert config_only.status == Status.SUCCEEDED, config_only.error
    assert config_only.artefact is None
    with pytest.raises(services.DeploymentRefused, match="kept no build output"):
        services.artefact_promote(source=config_only, servers=[estate["production"]], user=alice)
