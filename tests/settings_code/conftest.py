"""Settings-as-code fixtures: the templates' project with a secret of every kind Slipway
keeps (Alice, a site admin, its admin; Bob on her team as a viewer; Charlie no member)."""

from __future__ import annotations

from tests.templates.conftest import (  # noqa: F401 (fixtures)
    SECRET_VALUES,
    alice_api,
    bob_api,
    charlie_api,
    configured,
    repo,
)
