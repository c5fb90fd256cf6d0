"""The web process's access log never shows a webhook URL's token."""

from __future__ import annotations

import logging
import logging.config

from django.conf import settings

from deployer.management.commands.serve import access_log_config


def test_the_access_log_hides_webhook_tokens(capsys):
    logging.config.dictConfig(access_log_config())
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d',
        "127.0.0.1:5000",
        "POST",
        "/hooks/tok-3f9a8c2d1e/?x=1",
        "1.1",
        200,
    )
    printed = capsys.readouterr()
    output = printed.out + printed.err
    assert "tok-3f9a8c2d1e" not in output
    assert '"POST /hooks/…/?x=1 HTTP/1.1" 200' in output


def test_djangos_own_request_warnings_hide_webhook_tokens(capsys):
    logging.config.dictConfig(settings.LOGGING)
    logging.getLogger("django.request").warning("Bad Request: %s", "/hooks/tok-77aa1b2c/")
    printed = capsys.readouterr()
    assert "tok-77aa1b2c" not in printed.out + printed.err
    assert "Bad Request: /hooks/…/" in printed.out + printed.err
