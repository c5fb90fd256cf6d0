"""The webhook tests' project (never deployed to for real) and poster."""

from tests.webhooks.conftest import fast_password_hashing, post, shop  # noqa: F401
