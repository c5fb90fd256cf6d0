"""The dashboard's pages for schedules, freeze windows and locks: Alice (admin) creates a
schedule and a freeze window from the settings pages; a frozen or locked project shows it on
the project list and its pages; the deploy dialog warns an admin and takes her reason, which
the audit log keeps; Bob (deployer) is refused; a rollback offers to lock."""

from __future__ import annotations

from datetime import time

import pytest

from builds.models import Deployment, Schedule, Status
from projects.models import AuditEvent, FreezeWindow, Membership, Role
from servers.models import Release, Server

pytestmark = pytest.mark.django_db


@pytest.fixture
def shop(project_factory, git_repo_factory, alice, bob):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    Membership.objects.create(project=project, user=bob, role=Role.DEPLOYER)
    return project


@pytest.fixture
def web1(shop):
    return Server.objects.create(
        project=shop,
        name="web1",
        hostname="web1.example.com",
        username="deploy",
        deploy_path="/srv/web1",
        host_key_fingerprint="SHA256:" + "k" * 43,
    )


def always(project) -> FreezeWindow:
    return FreezeWindow.objects.create(
        project=project,
        name="code freeze",
        weekdays=list(range(7)),
        start_time=time(0),
        end_time=time(0),
    )


def test_alice_creates_a_schedule_and_sees_it_on_the_project_page(alice_client, shop, web1):
    page = alice_client.post(
        f"/projects/{shop.slug}/settings/schedules/",
        {
            "name": "nightly",
            "kind": "weekly",
            "time_of_day": "04:30",
            "weekdays": ["0", "4"],
            "time_zone": "Europe/Paris",
            "servers": [web1.pk],
            "skip_unchanged": "on",
            "enabled": "on",
        },
        follow=True,
    )
    assert page.status_code == 200
    schedule = Schedule.objects.get()
    assert schedule.weekdays == [0, 4] and schedule.next_run_at is not None
    assert "At 04:30 on Monday and Friday (Europe/Paris)" in page.content.decode()
    overview = alice_client.get(f"/projects/{shop.slug}/").content.decode()
    assert "nightly" in overview and "No slot has come yet." in overview
    edit = alice_client.get(f"/projects/{shop.slug}/settings/schedules/{schedule.pk}/")
    assert edit.status_code == 200 and b'value="04:30"' in edit.content


def test_a_schedule_form_with_a_bad_cron_expression_says_what_is_wrong(alice_client, shop, web1):
    page = alice_client.post(
        f"/projects/{shop.slug}/settings/schedules/",
        {
            "name": "x",
            "kind": "cron",
            "cron": "61 * * * *",
            "time_zone": "UTC",
            "servers": [web1.pk],
        },
    )
    assert page.status_code == 200
    assert "is not a cron expression" in page.content.decode()
    assert not Schedule.objects.exists()


def test_alice_creates_a_freeze_window_and_the_project_shows_frozen(alice_client, shop, web1):
    alice_client.post(
        f"/projects/{shop.slug}/settings/freeze-windows/",
        {
            "name": "code freeze",
            "kind": "weekly",
            "weekdays": [str(day) for day in range(7)],
            "start_time": "00:00",
            "end_time": "00:00",
            "time_zone": "UTC",
        },
    )
    assert FreezeWindow.objects.get().weekdays == list(range(7))
    assert b'id="project-frozen-badge"' in alice_client.get(f"/projects/{shop.slug}/").content
    index = alice_client.get("/").content.decode()
    assert ">Frozen</span>" in index


def test_the_deploy_dialog_warns_an_admin_and_keeps_her_reason(alice_client, shop, web1, alice):
    always(shop)
    dialog = alice_client.get(f"/projects/{shop.slug}/deploy/").content.decode()
    assert 'id="freeze-override"' in dialog and "You may deploy anyway as an admin" in dialog

    refused = alice_client.post(
        f"/projects/{shop.slug}/deploy/", {"servers": [web1.pk], "action": "deploy"}
    )
    assert refused.status_code == 200 and not Deployment.objects.exists()
    assert "A project admin may deploy anyway by giving a reason" in refused.content.decode()

    done = alice_client.post(
        f"/projects/{shop.slug}/deploy/",
        {"servers": [web1.pk], "action": "deploy", "freeze_override_reason": "hotfix"},
    )
    assert done.status_code == 302
    event = AuditEvent.objects.get(action="deployment.freeze_overridden")
    assert event.actor == alice and event.detail["reason"] == "hotfix"


def test_a_deployer_is_refused_during_a_freeze_even_with_a_reason(bob_client, shop, web1):
    always(shop)
    page = bob_client.post(
        f"/projects/{shop.slug}/deploy/",
        {"servers": [web1.pk], "action": "deploy", "freeze_override_reason": "please"},
    )
    assert "only a project admin may deploy during a freeze" in page.content.decode()
    assert not Deployment.objects.exists()


def test_bob_locks_from_the_project_page_and_alice_unlocks(alice_client, bob_client, shop, web1):
    bob_client.post(f"/projects/{shop.slug}/lock/", {"reason": "investigating 500s"})
    page = alice_client.get(f"/projects/{shop.slug}/").content.decode()
    assert 'id="project-lock"' in page and "investigating 500s" in page and "by bob" in page
    assert ">Locked</span>" in alice_client.get("/").content.decode()

    alice_client.post(f"/projects/{shop.slug}/unlock/")
    shop.refresh_from_db()
    assert shop.locked_at is None
    assert AuditEvent.objects.filter(action="project.unlocked", actor__username="alice").exists()


def test_a_rollback_from_the_server_page_can_lock_the_server(alice_client, shop, web1):
    done = Deployment.objects.create(project=shop, status=Status.SUCCEEDED)
    for name, live in (("r1", False), ("r2", True)):
        Release.objects.create(
            server=web1, deployment=done, name=name, revision="a" * 40, live=live
        )
    page = alice_client.get(f"/projects/{shop.slug}/servers/{web1.pk}/").content.decode()
    assert "and lock web1" in page

    alice_client.post(
        f"/projects/{shop.slug}/servers/{web1.pk}/rollback/",
        {"release": "r1", "lock": "1", "lock_reason": "r2 breaks the cart"},
    )

    web1.refresh_from_db()
    assert web1.lock_reason == "r2 breaks the cart"
    assert Deployment.objects.filter(kind="rollback").exists()
