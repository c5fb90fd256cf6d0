"""The project settings page shows an ssh repository's host key, checks it and trusts it."""

from __future__ import annotations

import pytest

from projects.models import Membership, Role
from tests.dashboard.support import signed_in

pytestmark = pytest.mark.django_db


@pytest.fixture
def ssh_project(project, sshd_target, settings):
    # The test's Git server is on loopback, which the operator must allow for repositories.
    settings.ALLOW_PRIVATE_REPOSITORIES = True
    project.repository_url = f"ssh://git@127.0.0.1:{sshd_target.port}/srv/shop.git"
    project.save()
    return project


def test_an_admin_checks_the_offered_key_and_trusts_it(alice_client, ssh_project, sshd_target):
    settings_page = f"/projects/{ssh_project.slug}/settings/"
    html = alice_client.get(settings_page).content.decode()
    assert "host key is not trusted yet" in html

    checked = alice_client.post(f"/projects/{ssh_project.slug}/repository/check/")
    html = checked.content.decode()
    assert checked.status_code == 200
    assert f'id="offered-repository-fingerprint">{sshd_target.host_key_fingerprint}<' in html
    assert "Trust this key" in html

    wrong = alice_client.post(
        f"/projects/{ssh_project.slug}/repository/trust/", {"fingerprint": "SHA256:" + "A" * 43}
    )
    assert wrong.status_code == 200 and "is not the key" in wrong.content.decode()

    trusted = alice_client.post(
        f"/projects/{ssh_project.slug}/repository/trust/",
        {"fingerprint": sshd_target.host_key_fingerprint},
    )
    assert trusted.status_code == 302
    html = alice_client.get(settings_page).content.decode()
    assert f"ssh host key is trusted: <code>{sshd_target.host_key_fingerprint}</code>" in html


def test_a_deployer_sees_the_offered_key_but_no_trust_button(bob, ssh_project, sshd_target):
    Membership.objects.filter(user=bob).update(role=Role.DEPLOYER)
    html = signed_in(bob).post(f"/projects/{ssh_project.slug}/repository/check/").content.decode()
    assert sshd_target.host_key_fingerprint in html
    assert "Trust this key" not in html and "Ask an admin of the project" in html
