"""A saved template's name: no invisible or control character, and unique on this Slipway
(built-ins included) by its NFKC, case-folded form, on PostgreSQL and SQLite alike."""

from __future__ import annotations

import pytest

from projects.models import ProjectTemplate

pytestmark = pytest.mark.django_db


def _save(client, project, name):
    return client.post("/api/v1/templates/", {"project": project.slug, "name": name}, format="json")


def _refused(response) -> bool:
    return response.status_code == 400 and list(response.json()) == ["name"]


@pytest.mark.parametrize(
    "name",
    [
        "Laravel\u200b",  # zero-width space
        "\u202elaravel",  # right-to-left override
        "Mine\nline",
        "Mine\tline",
        "Mine\u2028line",  # line separator
        "Mine\u2029line",  # paragraph separator
        "\ufeffOur Laravel",  # byte order mark
        "Our\u00adLaravel",  # soft hyphen
    ],
)
def test_it_refuses_a_name_with_a_control_or_format_character(alice_api, configured, name):
    response = _save(alice_api, configured, name)
    assert _refused(response), response.content
    assert not ProjectTemplate.objects.exists()


def _full_width(text: str) -> str:
    return "".join(chr(ord(char) + 0xFEE0) if char != " " else "\u3000" for char in text)


@pytest.mark.parametrize(
    "name",
    [
        _full_width("laravel"),
        _full_width("Django"),
        _full_width("NODE"),
        _full_width("Static site"),
        "LARAVEL",
        "Static\u00a0site",
        "static  SITE",
    ],
)
def test_it_refuses_a_builtin_name_in_any_form(alice_api, configured, name):
    response = _save(alice_api, configured, name)
    assert _refused(response), response.content
    assert "built-in" in response.json()["name"][0]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("Émile", "émile"),
        ("Émile", "E\u0301MILE"),  # decomposed
        ("STRASSE", "straße"),
        ("\ufb01les", "FILES"),  # a ligature
        ("Our Laravel", "our  laravel"),
    ],
)
def test_names_are_unique_by_their_folded_form(alice_api, configured, first, second):
    assert _save(alice_api, configured, first).status_code == 201
    response = _save(alice_api, configured, second)
    assert _refused(response), response.content
    assert "exists already" in response.json()["name"][0]
    assert list(ProjectTemplate.objects.values_list("name", flat=True)) == [first]


def test_it_keeps_a_name_as_typed(alice_api, configured):
    for name in ("Émile's PHP", "Straße app", "日本語 site"):
        response = _save(alice_api, configured, name)
        assert response.status_code == 201, response.content
        assert response.json()["name"] == name
    assert ProjectTemplate.objects.count() == 3
