"""The OpenAPI schema: valid, complete, secrets in requests only; and a property test that
drives every operation through it and never gets a server error back."""

from __future__ import annotations

import re
from typing import Any

import pytest
import schemathesis
from django.core import signals
from django.db import close_old_connections
from drf_spectacular.validation import validate_schema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from builds.models import TargetStatus
from deployer.wsgi import application
from tests.api.conftest import issue_token
from tests.api.surface import one_of_each

pytestmark = pytest.mark.django_db

SCHEMA_URL = "/api/schema/?format=json"
# The property test's bound: ~60 operations, 2 modes, this many examples each (~20 s).
EXAMPLES_PER_OPERATION = 6


def test_the_schema_is_valid_openapi_3(alice_api):
    response = alice_api.get(SCHEMA_URL)
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    validate_schema(schema)
    paths = schema["paths"]
    for path in (
        "/api/v1/me/",
        "/api/v1/me/tokens/",
        "/api/v1/projects/",
        "/api/v1/projects/{slug}/",
        "/api/v1/projects/{slug}/servers/{server_id}/check/",
        "/api/v1/projects/{slug}/servers/{server_id}/drift/",
        "/api/v1/projects/{slug}/servers/{server_id}/trust/",
        "/api/v1/projects/{slug}/servers/{server_id}/releases/",
        "/api/v1/projects/{slug}/servers/{server_id}/rollback/",
        "/api/v1/projects/{slug}/deployments/",
        "/api/v1/deployments/{deployment_id}/",
        "/api/v1/deployments/{deployment_id}/log/",
        "/api/v1/deployments/{deployment_id}/cancel/",
        "/api/v1/deployments/{deployment_id}/rollback/",
        "/api/v1/deployments/{deployment_id}/promote/",
        "/api/v1/deployments/{deployment_id}/abort/",
        "/api/v1/deployments/{deployment_id}/retry/",
        "/api/v1/deployments/{deployment_id}/promotions/",
        "/api/v1/projects/{slug}/commands/{id}/",
        "/api/v1/projects/{slug}/config-files/{id}/",
        "/api/v1/projects/{slug}/excluded-files/{id}/",
        "/api/v1/projects/{slug}/environment/{id}/",
        "/api/v1/projects/{slug}/build-commands/{id}/",
        "/api/v1/projects/{slug}/groups/{id}/",
        "/api/v1/projects/{slug}/health-checks/",
        "/api/v1/projects/{slug}/health-checks/{id}/",
        "/api/v1/projects/{slug}/notifications/",
        "/api/v1/projects/{slug}/notifications/{id}/",
        "/api/v1/projects/{slug}/notifications/{id}/deliveries/",
        "/api/v1/projects/{slug}/members/{username}/",
        "/api/v1/templates/",
        "/api/v1/templates/{id}/",
        "/api/v1/projects/{slug}/settings/",
        "/api/v1/projects/{slug}/settings/import/",
    ):
        assert path in paths, path
    assert "bearerAuth" in schema["components"]["securitySchemes"]
    components = schema["components"]["schemas"]
    for secret in ("password", "private_key"):
        assert secret not in components["Server"]["properties"]
        assert secret in components["ServerInputRequest"]["properties"]
    assert "repository_token" not in components["Project"]["properties"]
    assert "repository_token" in components["ProjectCreateRequest"]["properties"]
    assert "repository_token" in components["PatchedProjectInputRequest"]["properties"]
    # A template is chosen when the project is made, never changed afterwards.
    assert "template" in components["ProjectCreateRequest"]["properties"]
    assert "template" not in components["PatchedProjectInputRequest"]["properties"]
    # A notification's URL holds a token: like its secret, it is sent, never answered.
    for secret in ("url", "secret"):
        assert secret not in components["Notification"]["properties"]
        assert secret in components["NotificationRequest"]["properties"]
    assert components["TargetStatusEnum"]["enum"] == [s.value for s in TargetStatus]
    target = components["Target"]["properties"]
    assert "reason" in target and _enum_of(target["status"]) == "TargetStatusEnum"
    for strategy in ("Group", "Deployment", "DeploymentCreateRequest"):
        assert _enum_of(components[strategy]["properties"]["strategy"]) == "StrategyEnum"
    for decision in ("promote", "abort"):
        answers = paths[f"/api/v1/deployments/{{deployment_id}}/{decision}/"]["post"]["responses"]
        assert {"202", "403", "404", "409"} <= set(answers)
    retry = paths["/api/v1/deployments/{deployment_id}/retry/"]["post"]["responses"]
    assert {"201", "400", "403", "404", "409"} <= set(retry)
    promotions = paths["/api/v1/deployments/{deployment_id}/promotions/"]["post"]
    assert {"201", "400", "403", "404", "409"} <= set(promotions["responses"])
    assert promotions["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/PromotionRequestRequest"
    )
    assert components["PromotionRequestRequest"]["required"] == ["to"]
    for listed in ("rollbacks", "retries", "promotions"):
        assert listed in components["Deployment"]["properties"]
    for linked in ("retry_of", "promoted_from", "artefact"):
        assert linked in components["DeploymentSummary"]["properties"]
    assert "promote" in components["KindEnum"]["enum"]


def _enum_of(field: dict[str, Any]) -> str:
    """The component a field's enum refers to (drf-spectacular wraps it when described)."""
    reference = field.get("$ref") or field["allOf"][0]["$ref"]
    return str(reference).rsplit("/", 1)[-1]


def test_the_browsable_docs_page_is_served_to_signed_in_users_only(client, alice):
    anonymous = client.get("/api/docs/")
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith("/login/?next=/api/docs/")
    assert client.get(SCHEMA_URL).status_code == 401
    client.force_login(alice)
    response = client.get("/api/docs/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "swagger" in page.lower()
    # Served by Slipway itself (drf-spectacular-sidecar), started by a script file: the page
    # needs no CDN and no inline script or style under the CSP.
    assert "cdn." not in page and "<style" not in page
    assert re.findall(r"<script(?![^>]*\bsrc=)", page) == []
    assert client.get("/api/docs/?script=").status_code == 200
    assert client.get(SCHEMA_URL).status_code == 200


def test_the_schema_is_served_for_an_api_token(alice_api, client):
    assert alice_api.get(SCHEMA_URL).status_code == 200
    assert client.get(SCHEMA_URL, HTTP_AUTHORIZATION="Bearer slw_unknown").status_code == 401


@pytest.fixture
def known_objects(site_admin, alice, bob, project, repo):
    """One object of every kind, so that some generated requests reach real ones."""
    return one_of_each(project)


def _pinned_parameters(path: str, method: str, known: dict[str, Any]) -> dict[str, Any] | None:
    """Real objects for the path's parameters; None where a request must not hit them."""
    if method == "DELETE" or path.endswith(("/check/", "/trust/")):
        # Deleting the shared objects would leave later requests nothing to find, and check/
        # and trust/ open connections (they are tested against real sshd targets elsewhere).
        return None
    values = {key: value for key, value in known.items() if key != "ids"}
    for kind, pk in known["ids"].items():
        if f"/{kind}/{{id}}/" in path:
            values["id"] = pk
    return values


# Beyond "no 5xx": the answer's status, content type and body are the ones the schema
# documents, so that clients generated from it can trust it.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _answers_as_documented(operation, mode, pinned, authorization):
    """A Hypothesis test: requests generated for ``operation`` never answer 5xx, and every
    answer is one the schema documents."""

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode), pin=st.booleans())
    def property_test(case, pin):
        if pin and pinned is not None:
            for name in case.path_parameters:
                if name in pinned:
                    case.path_parameters[name] = pinned[name]
        response = case.call(headers={"Authorization": authorization})
        assert response.status_code < 500, (
            f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:500]}"
        )
        case.validate_response(response, checks=CHECKS)

    return property_test


@pytest.fixture
def wsgi_app_in_test_transaction():
    """The real WSGI application, minus closing the database connection after each request
    (it would end the test's transaction, as Django's own test client knows)."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield application
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


def test_every_answer_is_documented_and_none_is_a_server_error(
    alice, known_objects, wsgi_app_in_test_transaction
):
    authorization = f"Bearer {issue_token(alice)}"
    schema = schemathesis.openapi.from_wsgi(
        SCHEMA_URL, wsgi_app_in_test_transaction, headers={"Authorization": authorization}
    )
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operations.append(result.ok())
    assert len(operations) > 50
    for operation in operations:
        pinned = _pinned_parameters(operation.path, operation.method.upper(), known_objects)
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            _answers_as_documented(operation, mode, pinned, authorization)()
