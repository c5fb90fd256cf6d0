"""Shared fixtures: personas, API clients, and the real-part test bed plugins."""

from __future__ import annotations

import pytest

pytest_plugins = [
    "tests.support.sshd",
    "tests.support.gitrepos",
    "tests.support.deployments",
    "tests.support.webserve",
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
