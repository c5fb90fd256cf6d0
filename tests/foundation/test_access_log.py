"""The web process's access log never shows a webhook URL's token."""

from __future__ import annotations

import logging
import logging.config

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
