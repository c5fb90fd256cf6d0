"""Logging filters that keep secrets out of access logs."""

from __future__ import annotations

import logging
import re

# /hooks/<token>/: the token authenticates custom JSON deliveries (docs/webhooks.md).
_HOOK_TOKEN = re.compile(r"(/hooks/)[^/?\s]+")


def hide_webhook_tokens(text: str) -> str:
    """``text`` with every ``/hooks/<token>`` shown as ``/hooks/…``."""
    return _HOOK_TOKEN.sub(r"\1…", text)


class HideWebhookTokens(logging.Filter):
    """Rewrites webhook URLs in a record's message and arguments (uvicorn's access log passes
    the path as an argument: client, method, path, HTTP version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = hide_webhook_tokens(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(
                hide_webhook_tokens(arg) if isinstance(arg, str) else arg for arg in record.args
            )
        return True
