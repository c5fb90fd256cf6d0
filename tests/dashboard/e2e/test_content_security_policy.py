"""The dashboard under its Content-Security-Policy, in Chromium: every main page, the live log
(a WebSocket) and the API docs (Swagger UI) load and work without a single violation."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from tests.dashboard.e2e.conftest import sign_in
from tests.dashboard.e2e.pages import HISTORY, main_pages

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

# Injected by Playwright before any page script (not subject to the page's CSP): it records
# every violation the browser reports, whatever the page itself does.
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", function (event) {
  window.__cspViolations.push(
    event.effectiveDirective + " blocked " + (event.blockedURI || "inline") +
    " at " + event.sourceFile + ":" + event.lineNumber
  );
});
"""


def _violations(page: Any) -> list[str]:
    return list(page.evaluate("window.__cspViolations || []"))


def test_every_main_page_passes_the_csp(new_page, slipway_app):
    made = slipway_app.shell(HISTORY)
    slug = made["slug"]
    page = new_page()
    page.add_init_script(RECORD_VIOLATIONS)
    console: list[str] = []
    page.on(
        "console",
        lambda message: (
            console.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )

    login = page.goto("/login/")
    assert login is not None
    assert "script-src 'self'" in login.headers["content-security-policy"]
    sign_in(page)

    paths = main_pages(made)
    for path in paths:
        response = page.goto(path)
        assert response is not None and response.status == 200, path
        assert "default-src 'self'" in response.headers["content-security-policy"], path
        page.wait_for_load_state("load")
        assert _violations(page) == [], path

    # The live log: its script runs, its WebSocket connects and draws the stored lines, and
    # the upload's progress bar shows without a style attribute.
    page.goto(f"/projects/{slug}/deployments/{made['running']}/")
    expect(page.locator("#log")).to_contain_text("uploading")
    expect(page.locator("#log-state")).to_have_text("Live")
    assert page.locator("progress.bar").first.evaluate("bar => bar.value") == 40
    assert _violations(page) == []

    # The API docs: Swagger UI from Slipway's own static files, started by a script file.
    page.goto("/api/docs/")
    expect(page.locator(".swagger-ui .info")).to_contain_text("Slipway API")
    assert _violations(page) == []
    assert console == []

    # The recorder does catch a violation: an inline handler the policy refuses.
    page.goto("/")
    page.evaluate(
        "document.body.insertAdjacentHTML('beforeend', "
        '\'<img src="data:," onerror="document.title=1" onload="document.title=1">\')'
    )
    page.wait_for_function("window.__cspViolations.length > 0")
    assert "script-src" in _violations(page)[0]
    assert page.title() != "1"
