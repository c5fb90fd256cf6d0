"""Drift checks through the database, the Celery tasks, the API and the server page, against
a real sshd target: a file edited on the server is found, a scheduled check notifies once
per new drift, a project that refuses drift fails its deployment before the switch, and
nobody outside the team sees any of it."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from builds import drift_checks, services
from builds.models import Deployment, DriftCheck, DriftStatus, DriftTrigger, LogLine, Status
from builds.notifications import (
    discord_message,
    email_message,
    notification_create,
    slack_message,
    teams_message,
)
from builds.retention import records_prune
from builds.tasks import run_deployment, run_drift_check, send_notification_delivery
from deployer import links
from projects.models import DeliveryStatus, Membership, NotificationDelivery, Role
from projects.services import project_create
from tests.api.conftest import client_for
from tests.notifications.conftest import allow_private, receiver, receiver_factory  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)

APP = {
    "index.php": "<?php echo 'shop';\n",
    "src/cart.php": "<?php // cart\n",
    "README.md": "# Shop\n",
}


def _run(deployment: Deployment) -> Deployment:
    run_deployment.apply(args=(deployment.pk,))
    deployment.refresh_from_db()
    return deployment


def _log(deployment: Deployment) -> str:
    return "\n".join(LogLine.objects.filter(deployment=deployment).values_list("text", flat=True))


def _check(server, actor=None) -> DriftCheck:
    check = drift_checks.drift_check_create(server=server, actor=actor)
    run_drift_check.apply(args=(check.pk,), throw=True)
    check.refresh_from_db()
    return check


@pytest.fixture
def deployed(git_repo_factory, sshd_target, project_factory, server_factory, alice):
    repo = git_repo_factory()
    repo.commit(APP, "A")
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    first = _run(services.deployment_create(project=project, servers=[server], user=alice))
    assert first.status == Status.SUCCEEDED, first.error
    return repo, project, server, sshd_target.deploy_path / "current"


def test_it_records_the_files_edited_added_and_removed_on_the_server(deployed, alice):
    _, _, server, live = deployed
    clean = _check(server, alice)
    assert clean.status == DriftStatus.CLEAN, clean.error
    assert clean.checked_count == len(APP) and clean.files == []
    assert clean.release_name == server.live_release().name

    (live / "src" / "cart.php").write_text("<?php // patched on the server\n")
    (live / "README.md").unlink()
    (live / "shell with space.php").write_text("<?php\n")
    drifted = _check(server, alice)
    assert drifted.status == DriftStatus.DRIFTED
    assert (drifted.changed_count, drifted.added_count, drifted.removed_count) == (1, 1, 1)
    assert [(f["path"], f["change"]) for f in drifted.files] == [
        ("README.md", "removed"),
        ("shell with space.php", "added"),
        ("src/cart.php", "changed"),
    ]
    cart = drifted.files[2]
    assert cart["size"] == len("<?php // patched on the server\n")
    assert cart["mtime"] is not None


def test_a_scheduled_check_notifies_when_drift_appears_and_not_again_while_it_stays(
    deployed,
    alice,
    allow_private,  # noqa: F811 (the notification tests' fixture, imported above)
    receiver,  # noqa: F811
):
    _, project, server, live = deployed
    notification_create(
        project=project,
        actor=alice,
        kind="webhook",
        url=receiver.url(),
        secret="whsec-3f9a8b7c6d5e4f3a2b1c",
        events=["drift"],
    )
    project.drift_check_hours = 6
    project.save(update_fields=["drift_check_hours"])

    def tick(now):
        checks = drift_checks.drift_checks_tick(now=now)
        for check in checks:
            run_drift_check.apply(args=(check.pk,), throw=True)
        return checks

    now = timezone.now()
    [first] = tick(now)
    assert first.trigger == DriftTrigger.SCHEDULED
    assert tick(now + timedelta(hours=1)) == [], "not due again before 6 hours"
    assert not NotificationDelivery.objects.exists(), "a clean server notifies nobody"

    (live / "index.php").write_text("<?php echo 'defaced';\n")
    DriftCheck.objects.update(created_at=now - timedelta(hours=7))
    [second] = tick(now)
    second.refresh_from_db()
    assert second.status == DriftStatus.DRIFTED and second.notified
    [delivery] = NotificationDelivery.objects.all()
    assert delivery.event == "drift" and delivery.deployment is None
    send_notification_delivery.apply(args=(delivery.pk,), throw=True)
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SENT, delivery.error
    [request] = receiver.requests
    assert request.headers["x-slipway-event"] == "drift"
    body = json.loads(request.body)
    assert body["server"]["name"] == server.name
    assert body["drift_check"]["changed"] == 1
    assert body["drift_check"]["files"][0]["path"] == "index.php"
    # Chat and email messages say the same, linking to the server's page.
    server_page = links.server_page(project.slug, server.pk)
    assert "Shop: drift found on web1" in slack_message(body)["text"]
    assert server_page in discord_message(body)["content"]
    assert "index.php (changed)" in json.dumps(teams_message(body))
    subject, text = email_message(body)
    assert subject == "Shop: drift found on web1" and server_page in text

    # The same drift at the next tick: recorded, not notified again.
    DriftCheck.objects.update(created_at=now - timedelta(hours=7))
    [third] = tick(now)
    third.refresh_from_db()
    assert third.status == DriftStatus.DRIFTED and not third.notified
    assert NotificationDelivery.objects.count() == 1


def test_a_project_that_refuses_drift_fails_before_the_switch_and_restore_puts_it_back(
    deployed, alice
):
    repo, project, server, live = deployed
    first_release = live.resolve()
    (live / "src" / "cart.php").write_text("<?php // hotfix\n")
    repo.commit({"index.php": "<?php echo 'shop v2';\n"}, "B")
    project.on_drift = "refuse"
    project.save(update_fields=["on_drift"])

    refused = _run(services.deployment_create(project=project, servers=[server], user=alice))
    assert refused.status == Status.FAILED
    target = refused.targets.get()
    assert refused.error_code == "drift_found", (refused.error_code, refused.error)
    assert "src/cart.php" in target.reason
    assert "src/cart.php" in _log(refused)
    assert "refuses to deploy over drift" in _log(refused)
    assert live.resolve() == first_release, "current is untouched"
    assert (live / "src" / "cart.php").read_text() == "<?php // hotfix\n"

    project.on_drift = "restore"
    project.save(update_fields=["on_drift"])
    restored = _run(services.deployment_create(project=project, servers=[server], user=alice))
    assert restored.status == Status.SUCCEEDED, restored.error
    assert "src/cart.php" in _log(restored)
    assert (live / "src" / "cart.php").read_text() == "<?php // cart\n"
    assert (live / "index.php").read_text() == "<?php echo 'shop v2';\n"


def test_the_api_runs_a_check_and_answers_the_last_one_to_the_team_only(
    deployed, alice, bob, charlie
):
    _, project, server, live = deployed
    Membership.objects.create(project=project, user=bob, role=Role.VIEWER)
    url = reverse("api-server-drift", args=[project.slug, server.pk])
    alice_api, bob_api, charlie_api = (client_for(u) for u in (alice, bob, charlie))

    answer = alice_api.get(url)
    assert answer.status_code == 200
    assert answer.json() == {
        "supported": True,
        "reason": "",
        "on_drift": "restore",
        "last_check": None,
    }
    (live / "added.txt").write_text("x")
    queued = alice_api.post(url)
    assert queued.status_code == 202, queued.content
    assert queued.json()["status"] == "queued"
    assert alice_api.post(url).json()["id"] == queued.json()["id"], "one active check"
    run_drift_check.apply(args=(queued.json()["id"],), throw=True)

    last = bob_api.get(url).json()["last_check"]
    assert last["status"] == "drifted" and last["requested_by"] == "alice"
    assert [(f["path"], f["change"]) for f in last["files"]] == [("added.txt", "added")]
    assert bob_api.post(url).status_code == 403, "a viewer may look, not run a check"
    assert charlie_api.get(url).status_code == 404
    assert charlie_api.post(url).status_code == 404


def test_the_server_page_lists_the_drifted_files_and_runs_a_check(
    deployed, alice_client, charlie_client
):
    _, project, server, live = deployed
    (live / "README.md").write_text("# Shop, edited\n")
    page_url = reverse("server-detail", args=[project.slug, server.pk])
    run_url = reverse("server-drift-check", args=[project.slug, server.pk])
    answer = alice_client.post(run_url)
    assert answer.status_code == 302
    check = DriftCheck.objects.get()
    run_drift_check.apply(args=(check.pk,), throw=True)
    page = alice_client.get(page_url)
    assert page.status_code == 200
    assert 'id="drift"' in page.text
    assert '<td data-label="Path" class="mono">README.md</td>' in page.text
    assert "1 changed, 0 added, 0 removed" in page.text
    assert charlie_client.post(run_url).status_code == 404
    assert DriftCheck.objects.count() == 1


def test_a_server_without_a_live_release_is_refused_naming_the_field(
    sshd_target, git_repo_factory, project_factory, server_factory, alice
):
    repo = git_repo_factory()
    repo.commit(APP, "A")
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    answer = client_for(alice).post(reverse("api-server-drift", args=[project.slug, server.pk]))
    assert answer.status_code == 400
    assert "no live release" in answer.json()["server"][0]


def test_old_checks_are_pruned_but_each_servers_newest_conclusive_one_stays(deployed, settings):
    _, _, server, _ = deployed
    settings.RETAIN_DELIVERIES_DAYS = 30
    long_ago = timezone.now() - timedelta(days=60)

    def old(status, fingerprint=""):
        return DriftCheck.objects.create(
            server=server,
            status=status,
            fingerprint=fingerprint,
            created_at=long_ago,
            finished_at=long_ago,
        )

    old(DriftStatus.CLEAN)
    old(DriftStatus.FAILED)
    newest = old(DriftStatus.DRIFTED, "f" * 64)
    report = records_prune()
    assert report.count("drift checks") == 2
    assert list(DriftCheck.objects.all()) == [newest]


def test_the_api_reads_and_writes_the_drift_settings_naming_a_bad_field(alice):
    project = project_create(
        owner=alice, name="Shop", repository_url="https://git.example.com/acme/shop.git"
    )
    api = client_for(alice)
    url = reverse("api-project", args=[project.slug])
    assert api.get(url).json()["on_drift"] == "restore"
    changed = api.patch(url, {"on_drift": "refuse", "drift_check_hours": 12}, format="json")
    assert changed.status_code == 200, changed.content
    assert (changed.json()["on_drift"], changed.json()["drift_check_hours"]) == ("refuse", 12)
    bad = api.patch(url, {"on_drift": "ignore"}, format="json")
    assert bad.status_code == 400 and "on_drift" in bad.json()
    bad = api.patch(url, {"drift_check_hours": -1}, format="json")
    assert bad.status_code == 400 and "drift_check_hours" in bad.json()
