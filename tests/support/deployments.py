"""Fixtures that wire projects and servers in the database to real sshd targets and repos."""

from __future__ import annotations

import pytest

from projects.services import project_create
from servers.models import Server


@pytest.fixture
def project_factory(alice):
    def make(repo, *, owner=None, name="Shop", **fields):
        return project_create(
            owner=owner or alice, name=name, repository_url=repo.url, branch="main", **fields
        )

    return make


@pytest.fixture
def server_factory():
    def make(project, target, *, name=None, trust=True, **fields):
        target.authorize(project.public_key)
        count = project.servers.count()
        return Server.objects.create(
            project=project,
            name=name or f"web{count + 1}",
            hostname=target.hostname,
            port=target.port,
            username=target.username,
            deploy_path=str(target.deploy_path),
            host_key_fingerprint=target.host_key_fingerprint if trust else "",
            **fields,
        )

    return make
