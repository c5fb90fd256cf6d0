"""Each release's manifest is recorded as the engine wrote it beside the release on the server
(stored from the engine's JSON text as it is, not parsed and serialised again), and it reads
back as the same manifest. Real Git repositories, real sshd targets, the database."""

from __future__ import annotations

import json

import pytest

from builds import services
from builds.engine.manifest import Manifest
from builds.models import Status
from builds.runner import server_spec
from builds.tasks import run_deployment
from servers.models import EncodedJSON, Release

pytestmark = pytest.mark.django_db(transaction=True)


def test_it_records_the_manifest_the_server_holds_beside_the_release(
    git_repo_factory, sshd_target, project_factory, server_factory, alice
):
    repo = git_repo_factory()
    repo.commit(
        {"index.html": "home\n", "café/menu.txt": "crêpes\n", "bin/run": "#!/bin/sh\n"},
        "A",
        executable=["bin/run"],
    )
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    deployment = services.deployment_create(project=project, servers=[server], user=alice)
    run_deployment.apply(args=(deployment.pk,))
    deployment.refresh_from_db()
    assert deployment.status == Status.SUCCEEDED, deployment.error

    release = Release.objects.get(server=server, live=True)
    on_server = (
        sshd_target.deploy_path / ".slipway" / "manifests" / f"{release.name}.json"
    ).read_bytes()
    assert release.manifest == json.loads(on_server)
    recorded = Manifest.from_document(release.manifest)
    assert set(recorded) == {"index.html", "café/menu.txt", "bin/run"}
    assert recorded["bin/run"].mode & 0o111
    assert server_spec(server).live_manifest == recorded


def test_it_stores_other_json_values_as_before(
    git_repo_factory, sshd_target, project_factory, server_factory
):
    repo = git_repo_factory()
    repo.commit({"index.html": "home\n"}, "A")
    server = server_factory(project_factory(repo), sshd_target)
    release = Release.objects.create(
        server=server, name="20260101-000000000-abcdef0", manifest={"entries": [], "é": 1}
    )
    encoded = Release.objects.create(
        server=server, name="20260101-000000001-abcdef0", manifest=EncodedJSON('{"a": [1, "b"]}')
    )

    assert Release.objects.get(pk=release.pk).manifest == {"entries": [], "é": 1}
    assert Release.objects.get(pk=encoded.pk).manifest == {"a": [1, "b"]}
