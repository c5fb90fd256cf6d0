"""Every page renders for the project's members, with what each of them may do."""

from __future__ import annotations

import pytest

from builds.models import Deployment, Kind, Status, WebhookDelivery, WebhookOutcome
from servers.models import ServerGroup

pytestmark = pytest.mark.django_db


def test_it_renders_every_page_for_an_admin(alice_client, site_admin, project, server, history):
    group = ServerGroup.objects.create(project=project, name="all web")
    group.servers.add(server)
    preview = Deployment.objects.create(project=project, kind=Kind.PREVIEW, status=Status.SUCCEEDED)
    WebhookDelivery.objects.create(
        project=project,
        provider="github",
        event="push",
        ref="refs/heads/main",
        outcome=WebhookOutcome.QUEUED,
    )
    slug = project.slug
    pages = [
        "/",
        "/projects/new/",
        f"/projects/{slug}/",
        f"/projects/{slug}/deployments/",
        f"/projects/{slug}/deployments/?previews=1",
        f"/projects/{slug}/settings/",
        f"/projects/{slug}/members/",
        f"/projects/{slug}/audit/",
        f"/projects/{slug}/deploy/",
        f"/projects/{slug}/deploy/?preview={preview.pk}",
        f"/projects/{slug}/servers/new/",
        f"/projects/{slug}/servers/{server.pk}/",
        f"/projects/{slug}/servers/{server.pk}/edit/",
        f"/projects/{slug}/deployments/{history[0].pk}/",
        f"/projects/{slug}/deployments/{history[0].pk}/summary/",
        f"/projects/{slug}/deployments/{preview.pk}/preview/",
        f"/projects/{slug}/settings/groups/{group.pk}/",
        "/account/tokens/",
        "/account/password/",
        "/account/two-factor/",
        "/users/",
        "/docs/webhooks.md",
        "/docs/users.md",
    ]
    pages += [
        f"/projects/{slug}/settings/{kind}/"
        for kind in (
            "build-commands",
            "commands",
            "config-files",
            "excluded-files",
            "environment",
            "groups",
        )
    ]
    for page in pages:
        response = alice_client.get(page)
        assert response.status_code == 200, page
