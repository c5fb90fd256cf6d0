"""Health checks never reach link-local addresses (cloud metadata), whatever the URL says."""

from __future__ import annotations

import http.server

import pytest

from builds.engine.health import (
    Attempt,
    HealthCheckFailed,
    HealthCheckSpec,
    http_attempt,
    run_check,
)
from tests.support.webserve import serve_in_background


@pytest.mark.parametrize(
    "url",
    ["http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/", "http://100.100.100.200/"],
)
def test_it_refuses_link_local_and_metadata_addresses(url):
    check = HealthCheckSpec(kind="http", url=url, retries=2, interval_seconds=0, timeout_seconds=1)
    lines: list[str] = []
    with pytest.raises(HealthCheckFailed, match=r"link-local|metadata"):
        run_check(check, variables={}, connection=None, workdir="/", log=lines.append)
    assert len(lines) == 2


# --------------------------------------------------------------------------- the address policy

OPERATOR_ALLOWS_LOOPBACK = {"allow_private": True}
PUBLIC_ONLY = {"allow_private": False, "private_hint": "only public, unless X=true"}


class _Site:
    """A loopback web server answering every GET with ``status``, ``body`` and ``headers``;
    it counts the requests it got."""

    def __init__(self, status=200, body=b"", headers=()):
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                site.requests += 1
                self.send_response(site.status)
                for name, value in site.headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(site.body)))
                self.end_headers()
                self.wfile.write(site.body)

            def log_message(self, *args):
                pass

        self.status, self.body, self.headers, self.requests = status, body, headers, 0
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        serve_in_background(self.httpd)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/health"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def site():
    sites = []

    def make(**kwargs):
        sites.append(_Site(**kwargs))
        return sites[-1]

    yield make
    for made in sites:
        made.stop()


def _check(url, **fields):
    return HealthCheckSpec(kind="http", url=url, timeout_seconds=2, **fields)


def test_it_passes_a_loopback_check_where_the_operator_allows_loopback(site):
    app = site(body=b"status: ok")
    outcome = http_attempt(_check(app.url, body_contains="ok", **OPERATOR_ALLOWS_LOOPBACK), app.url)
    assert outcome == Attempt(True, "status 200")
    missing = http_attempt(
        _check(app.url, body_contains="ready", **OPERATOR_ALLOWS_LOOPBACK), app.url
    )
    assert missing == Attempt(False, "the body does not contain 'ready'")


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.1", "2130706433", "0x7f.0.0.1", "0177.0.0.1", "localhost"]
)
def test_it_refuses_loopback_in_any_form_where_the_operator_does_not_allow_it(site, host):
    app = site(body=b"ok")
    url = app.url.replace("127.0.0.1", host)
    outcome = http_attempt(_check(url, **PUBLIC_ONLY), url)
    assert not outcome.ok and "a loopback address; only public, unless X=true" in outcome.detail
    assert app.requests == 0


def test_a_body_match_is_no_oracle_on_a_refused_address(site):
    """Whether the body would have matched or not, a refused address gives the same answer."""
    app = site(body=b"internal-admin-token=abc")
    matching = http_attempt(_check(app.url, body_contains="token=abc", **PUBLIC_ONLY), app.url)
    other = http_attempt(_check(app.url, body_contains="nothing-like-it", **PUBLIC_ONLY), app.url)
    assert matching == other and not matching.ok
    assert app.requests == 0


@pytest.mark.parametrize(
    "location", ["http://169.254.169.254/latest/meta-data/", "http://[::ffff:a9fe:a9fe]/"]
)
def test_a_redirect_to_a_refused_address_is_not_followed_nor_read(site, location):
    app = site(status=302, body=b"", headers=[("Location", location)])
    outcome = http_attempt(
        _check(app.url, body_contains="ami-id", **OPERATOR_ALLOWS_LOOPBACK), app.url
    )
    assert outcome == Attempt(False, "status 302, expected 200")
    # Even a check that expects the redirect only sees the allowed server's answer.
    expecting = _check(
        app.url, expected_status=302, body_contains="ami-id", **OPERATOR_ALLOWS_LOOPBACK
    )
    assert http_attempt(expecting, app.url) == Attempt(False, "the body does not contain 'ami-id'")


def test_a_redirect_is_never_followed_even_to_an_allowed_address(site):
    target = site(body=b"ok")
    app = site(status=302, headers=[("Location", target.url)])
    outcome = http_attempt(_check(app.url, **OPERATOR_ALLOWS_LOOPBACK), app.url)
    assert outcome == Attempt(False, "status 302, expected 200")
    assert (app.requests, target.requests) == (1, 0)
