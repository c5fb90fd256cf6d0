"""No CDN anywhere: with every request that would leave loopback cut off, Chromium loads every
dashboard page (those listed, and every page their links lead to), the sign-in page and the
API docs (Swagger UI, vendored) whole, and not one request tries to leave."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
from playwright.sync_api import expect

from tests.dashboard.e2e.conftest import sign_in
from tests.dashboard.e2e.pages import HISTORY, main_pages

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
# Links a crawler does not follow: they act (behind a confirmation, but still), or are no
# page (the API's schema is a download, its answers JSON).
NOT_FOLLOWED = ("/logout/", "delete/", "remove/", "/hooks/", "/api/schema/", "/api/v1/")
MOST_PAGES = 150
# Pages load in this many tabs at once: each is waited for until its network has been quiet
# for 500 ms (Playwright's "networkidle"), and those waits overlap.
TABS = 4


def _cut_the_network(context: Any) -> list[str]:
    """Abort every request whose host is not loopback; the list fills with what was tried."""
    left: list[str] = []

    def guard(route: Any) -> None:
        url = route.request.url
        host = urlsplit(url).hostname or ""
        if urlsplit(url).scheme in ("http", "https", "ws", "wss") and host not in LOOPBACK:
            left.append(url)
            route.abort("internetdisconnected")
        else:
            route.continue_()

    def guard_socket(socket: Any) -> None:
        if (urlsplit(socket.url).hostname or "") not in LOOPBACK:
            left.append(socket.url)
            socket.close()
        else:
            socket.connect_to_server()

    context.route("**/*", guard)
    context.route_web_socket("**/*", guard_socket)
    return left


def _same_site_links(page: Any, base_url: str) -> list[str]:
    # A link marked download (the settings' YAML export) is a file, not a page to load.
    hrefs = page.eval_on_selector_all("a[href]:not([download])", "links => links.map(a => a.href)")
    paths = []
    for href in hrefs:
        parts = urlsplit(urljoin(base_url, href))
        if parts.scheme not in ("http", "https") or f"{parts.scheme}://{parts.netloc}" != base_url:
            continue
        if any(marker in parts.path for marker in NOT_FOLLOWED):
            continue
        paths.append(parts.path + (f"?{parts.query}" if parts.query else ""))
    return paths


def _shape(path: str) -> str:
    """The path with its project's slug and every number replaced, and whether it has a
    query: pages of one shape are made by one template."""
    path, query = path.split("?")[0], "?" if "?" in path else ""
    return (
        re.sub(r"[0-9]+", "N", re.sub(r"^/projects/(?!new/)[^/]+/", "/projects/S/", path)) + query
    )


def test_every_page_loads_with_no_request_leaving_loopback(new_page, slipway_app):
    made = slipway_app.shell(HISTORY)
    page = new_page()
    context = page.context
    left = _cut_the_network(context)
    failed: list[str] = []
    # A loopback request that failed (not one cut short by the next navigation) would mean a
    # page that does not load whole.
    context.on(
        "requestfailed",
        lambda request: (
            None
            if request.failure == "net::ERR_ABORTED"
            else failed.append(f"{request.url}: {request.failure}")
        ),
    )

    sign_in(page)  # the sign-in page loads under the guard too
    tabs = [page, *(context.new_page() for _ in range(TABS - 1))]

    main = main_pages(made)
    queue = [*main, "/users/", "/account/two-factor/", "/api/docs/"]
    seen: set[str] = set()
    # One page per template is enough: /deployments/12/ and /deployments/13/ load the same
    # files (ids and query values are what differ), and so do the same pages of the other
    # projects that earlier tests of the session made (each project's slug differs).
    shapes: set[str] = set()
    while queue and len(seen) < MOST_PAGES:
        batch: list[str] = []
        while queue and len(batch) < len(tabs) and len(seen) < MOST_PAGES:
            path = queue.pop(0)
            shape = _shape(path)
            if path in seen or (shape in shapes and path not in main):
                continue
            seen.add(path)
            shapes.add(shape)
            batch.append(path)
        # Each tab starts its page; then each is waited for until its network is quiet.
        tabs_used = tabs[: len(batch)]
        responses = [
            tab.goto(path, wait_until="commit") for tab, path in zip(tabs_used, batch, strict=True)
        ]
        for tab, path, response in zip(tabs_used, batch, responses, strict=True):
            assert response is not None and response.status < 400, (
                path,
                response and response.status,
            )
            tab.wait_for_load_state("networkidle")
            assert left == [], (batch, left)
            if "text/html" in (response.headers.get("content-type") or ""):
                queue += [
                    link for link in _same_site_links(tab, slipway_app.base_url) if link not in seen
                ]

    assert len(seen) > len(main_pages(made)), "the crawl found no page beyond the list"
    assert failed == [], failed

    # The API docs draw themselves from vendored files.
    page.goto("/api/docs/")
    expect(page.locator(".swagger-ui .info")).to_contain_text("Slipway API")

    # The guard does see a request that leaves: a navigation (which no CSP stops).
    page.goto("/")
    with pytest.raises(Exception, match="ERR_INTERNET_DISCONNECTED"):
        page.goto("https://cdn.example.com/swagger-ui.css")
    assert left == ["https://cdn.example.com/swagger-ui.css"]
