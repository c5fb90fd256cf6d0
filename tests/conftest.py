"""Shared fixtures: personas, API clients, and the real-part test bed plugins."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.dashboard.support import signed_in

pytest_plugins = [
    "tests.support.sshd",
    "tests.support.netns",
    "tests.support.bastion",
    "tests.support.gitrepos",
    "tests.support.deployments",
    "tests.support.webserve",
    "tests.support.ftpd",
    "tests.support.s3d",
    "tests.support.nginx",
]


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password="alice-password-1")


@pytest.fixture
def site_admin(alice):
    """Alice as a site admin: she creates projects and manages users and the site settings."""
    alice.is_superuser = alice.is_staff = True
    alice.save(update_fields=["is_superuser", "is_staff"])
    return alice


@pytest.fixture
def bob(django_user_model):
    return django_user_model.objects.create_user("bob", password="bob-password-1")


@pytest.fixture
def charlie(django_user_model):
    return django_user_model.objects.create_user("charlie", password="charlie-password-1")


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # The personas' passwords are hashed at every test; the real hasher costs ~0.4 s each.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def alice_client(alice) -> Client:
    return signed_in(alice)


@pytest.fixture
def bob_client(bob) -> Client:
    return signed_in(bob)


@pytest.fixture
def charlie_client(charlie) -> Client:
    return signed_in(charlie)
