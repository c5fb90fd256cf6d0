"""Revoking access closes live-log WebSockets at once: a member removed from a project, or a
user deactivated, loses every open socket the access no longer allows; a lowered role that
still may read the log keeps its socket. Through the whole ASGI stack, with a real Channels
communicator."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django_otp.plugins.otp_totp.models import TOTPDevice

from builds.models import Deployment, Status
from deployer.asgi import application
from projects.accounts import two_factor_reset, user_deactivate
from projects.models import Membership, Role, SiteSettings
from projects.services import (
    close_user_sockets,
    member_remove,
    member_update,
    project_create,
    project_delete,
)
from tests.dashboard.support import signed_in, websocket_communicator
from tests.dashboard.test_consumer import _headers

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def deployment(project):
    return Deployment.objects.create(project=project, status=Status.RUNNING)


@pytest.fixture
def other_deployment(alice, bob):
    other = project_create(
        owner=alice, name="Blog", repository_url="https://git.example.com/acme/blog.git"
    )
    Membership.objects.create(project=other, user=bob, role=Role.VIEWER)
    return Deployment.objects.create(project=other, status=Status.RUNNING)


async def _open(deployment, user):
    client = await database_sync_to_async(signed_in)(user)
    communicator = websocket_communicator()(
        application, f"/ws/deployments/{deployment.pk}/", headers=_headers(client)
    )
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def _closed_with_notice(communicator) -> bool:
    notice = await communicator.receive_json_from(timeout=5)
    assert notice["type"] == "access_revoked"
    closing = await communicator.receive_output(timeout=5)
    return closing == {"type": "websocket.close", "code": 4403}


def test_removing_a_member_closes_their_socket_and_no_other(
    alice, bob, project, deployment, other_deployment
):
    async def scenario():
        bobs = await _open(deployment, bob)
        bobs_other = await _open(other_deployment, bob)
        alices = await _open(deployment, alice)
        membership = await database_sync_to_async(
            Membership.objects.select_related("project", "user").get
        )(project=project, user=bob)
        await database_sync_to_async(member_remove)(membership=membership, actor=alice)
        closed = await _closed_with_notice(bobs)
        untouched = await bobs_other.receive_nothing(timeout=0.5) and await alices.receive_nothing(
            timeout=0.2
        )
        await bobs_other.disconnect()
        await alices.disconnect()
        return closed, untouched

    closed, untouched = async_to_sync(scenario)()
    assert closed, "the removed member's socket is closed with 4403"
    assert untouched, "their socket on another project and other members' sockets stay open"


def test_a_lowered_role_that_may_still_read_keeps_its_socket(alice, bob, project, deployment):
    Membership.objects.filter(project=project, user=bob).update(role=Role.DEPLOYER)

    async def scenario():
        bobs = await _open(deployment, bob)
        membership = await database_sync_to_async(
            Membership.objects.select_related("project", "user").get
        )(project=project, user=bob)
        await database_sync_to_async(member_update)(
            membership=membership, actor=alice, role=Role.VIEWER
        )
        still_open = await bobs.receive_nothing(timeout=0.5)
        await bobs.disconnect()
        return still_open

    assert async_to_sync(scenario)()


def test_deleting_a_project_closes_its_members_sockets(alice, bob, project, deployment):
    project.deployments.update(status=Status.SUCCEEDED)

    async def scenario():
        sockets = [await _open(deployment, alice), await _open(deployment, bob)]
        await database_sync_to_async(project_delete)(project=project, actor=alice)
        return [await _closed_with_notice(socket) for socket in sockets]

    assert async_to_sync(scenario)() == [True, True]


def test_deactivating_a_user_closes_every_socket_of_theirs(bob, deployment, other_deployment):
    async def scenario():
        sockets = [await _open(deployment, bob), await _open(other_deployment, bob)]

        def deactivate() -> None:
            bob.is_active = False
            bob.save(update_fields=["is_active"])
            close_user_sockets(bob.pk)

        await database_sync_to_async(deactivate)()
        return [await _closed_with_notice(socket) for socket in sockets]

    assert async_to_sync(scenario)() == [True, True]


def test_an_inactive_user_cannot_open_a_socket(bob, deployment):
    client = signed_in(bob)
    bob.is_active = False
    bob.save(update_fields=["is_active"])

    async def knock():
        communicator = websocket_communicator()(
            application, f"/ws/deployments/{deployment.pk}/", headers=_headers(client)
        )
        connected, _ = await communicator.connect()
        await communicator.disconnect()
        return connected

    assert async_to_sync(knock)() is False


def test_deactivating_from_the_users_page_service_closes_their_sockets(
    alice, bob, deployment, other_deployment
):
    alice.is_superuser = True
    alice.save(update_fields=["is_superuser"])

    async def scenario():
        sockets = [await _open(deployment, bob), await _open(other_deployment, bob)]
        await database_sync_to_async(user_deactivate)(actor=alice, user=bob)
        return [await _closed_with_notice(socket) for socket in sockets]

    assert async_to_sync(scenario)() == [True, True]


def test_resetting_a_users_two_factor_ends_their_sessions_and_sockets(alice, bob, deployment):
    alice.is_superuser = True
    alice.save(update_fields=["is_superuser"])

    async def scenario():
        socket = await _open(deployment, bob)
        await database_sync_to_async(TOTPDevice.objects.create)(
            user=bob, name="lost phone", confirmed=True
        )
        await database_sync_to_async(two_factor_reset)(actor=alice, user=bob)
        return await _closed_with_notice(socket)

    assert async_to_sync(scenario)()


def _knock(client, deployment) -> bool:
    async def knock():
        communicator = websocket_communicator()(
            application, f"/ws/deployments/{deployment.pk}/", headers=_headers(client)
        )
        connected, _ = await communicator.connect()
        await communicator.disconnect()
        return connected

    return async_to_sync(knock)()


def test_a_user_who_must_still_set_up_two_factor_cannot_open_a_socket(bob, deployment):
    SiteSettings.objects.update_or_create(
        pk=SiteSettings.SINGLETON_PK, defaults={"require_two_factor": True}
    )
    assert _knock(signed_in(bob), deployment) is False


def test_a_session_that_skipped_its_two_factor_code_cannot_open_a_socket(bob, deployment):
    client = signed_in(bob)  # signed in before the authenticator was added
    TOTPDevice.objects.create(user=bob, name="phone", confirmed=True)
    assert _knock(client, deployment) is False
