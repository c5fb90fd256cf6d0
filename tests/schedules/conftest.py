"""The API tests' personas and project (Alice admin, Bob viewer)."""

from tests.api.conftest import alice_api, bob_api, project, repo  # noqa: F401
