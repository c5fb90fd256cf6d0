"""Security headers on every kind of answer, and templates the CSP can pass: no inline
script, event handler, javascript: URL or style attribute anywhere in templates/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.api.conftest import client_for

pytestmark = pytest.mark.django_db

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"

POLICY = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data:",
    "frame-ancestors": "'none'",
    "base-uri": "'none'",
    "form-action": "'self'",
    "object-src": "'none'",
}


def _directives(header: str) -> dict[str, str]:
    pairs = (part.strip().split(" ", 1) for part in header.split(";") if part.strip())
    return {name: value for name, value in pairs}


@pytest.mark.parametrize("path", ["/login/", "/", "/account/tokens/", "/api/docs/", "/nowhere/"])
def test_every_page_carries_the_policy_and_the_headers(client, alice, path):
    client.force_login(alice)
    response = client.get(path)
    directives = _directives(response["Content-Security-Policy"])
    for name, value in POLICY.items():
        assert directives[name] == value, (path, name)
    assert directives["connect-src"].split() == ["'self'", "ws://127.0.0.1:8000"]
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["X-Frame-Options"] == "DENY"


def test_the_api_answers_carry_the_headers_too(alice):
    response = client_for(alice).get("/api/v1/me/")
    assert response.status_code == 200
    assert "default-src 'self'" in response["Content-Security-Policy"]
    assert response["X-Content-Type-Options"] == "nosniff"


INLINE = [
    (re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I), "an inline <script>"),
    (re.compile(r"<style\b", re.I), "a <style> element"),
    (re.compile(r"\sstyle\s*=", re.I), "a style attribute"),
    (re.compile(r"\son[a-z]+\s*=", re.I), "an on*= event handler"),
    (re.compile(r"javascript:", re.I), "a javascript: URL"),
]


def test_no_template_has_inline_script_or_style():
    found = []
    for template in sorted(TEMPLATES.rglob("*.html")):
        text = template.read_text()
        for pattern, what in INLINE:
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{template.relative_to(TEMPLATES)}:{line}: {what}")
    assert found == []
