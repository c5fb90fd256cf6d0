"""Addresses that cannot name anything (NUL bytes, ids past any row) answer 404, never 500."""

from __future__ import annotations

import pytest

from servers.models import Server

pytestmark = pytest.mark.django_db

BEYOND_ANY_ID = str(2**64)


@pytest.mark.parametrize(
    "path",
    [
        "projects/{slug}/members/a%00b/",
        "projects/{slug}/servers/{server}/releases/a%00b/",
        "projects/{slug}/servers/" + BEYOND_ANY_ID + "/",
        "projects/{slug}/commands/" + BEYOND_ANY_ID + "/",
        "projects/{slug}/groups/" + BEYOND_ANY_ID + "/",
        "deployments/" + BEYOND_ANY_ID + "/",
        "deployments/" + BEYOND_ANY_ID + "/log/",
        "deployments/0/",
    ],
)
def test_it_answers_404_for_an_address_that_names_nothing(alice_api, project, path):
    server = Server.objects.create(
        project=project, name="web1", hostname="h", username="u", deploy_path="/srv"
    )
    url = "/api/v1/" + path.format(slug=project.slug, server=server.pk)
    assert alice_api.get(url).status_code == 404


@pytest.mark.parametrize(
    "path", ["nothing-here/", "projects/not a slug/", "projects/shop/servers/x/", "line%0Abreak/"]
)
def test_any_other_api_address_answers_a_json_404(alice_api, path):
    response = alice_api.get("/api/v1/" + path)
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert "no API address" in response.json()["detail"]
