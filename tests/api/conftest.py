"""API fixtures: Bearer-token clients for the personas and a project they share.

Alice is admin of the project, Bob is a viewer on her team, Charlie is no member at all.
"""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from projects.models import ApiToken, Membership, Role


def issue_token(user) -> str:
    _, token = ApiToken.issue(user=user, name="tests")
    return token


def client_for(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {issue_token(user)}")
    return client


@pytest.fixture
def alice_api(alice) -> APIClient:
    return client_for(alice)


@pytest.fixture
def bob_api(bob) -> APIClient:
    return client_for(bob)


@pytest.fixture
def charlie_api(charlie) -> APIClient:
    return client_for(charlie)


@pytest.fixture
def repo(git_repo_factory):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    return repo


@pytest.fixture
def project(repo, project_factory, alice, bob):
    """Alice's project, with Bob on her team as a viewer."""
    project = project_factory(repo)
    Membership.objects.create(project=project, user=bob, role=Role.VIEWER)
    return project


def make_deployer(project, user) -> None:
    Membership.objects.filter(project=project, user=user).update(role=Role.DEPLOYER)
