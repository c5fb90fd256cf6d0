"""SLIPWAY_SMTP_URL and SLIPWAY_EMAIL_FROM become Django's mail settings; bad values stop the
start, naming the variable."""

from __future__ import annotations

import json

import pytest

from tests.support.processes import clean_env, manage

PRINT_SETTINGS = (
    "import json; from django.conf import settings as s; print(json.dumps([s.EMAIL_HOST, "
    "s.EMAIL_PORT, s.EMAIL_HOST_USER, s.EMAIL_HOST_PASSWORD, s.EMAIL_USE_TLS, s.EMAIL_USE_SSL, "
    "s.DEFAULT_FROM_EMAIL, s.ALLOW_PRIVATE_NOTIFICATION_TARGETS]))"
)


def settings_for(tmp_path, **variables: str) -> list[object]:
    result = manage(
        "shell", "-c", PRINT_SETTINGS, env=clean_env(SLIPWAY_DATA_DIR=str(tmp_path), **variables)
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_it_reads_a_starttls_server_with_an_encoded_password(tmp_path):
    assert settings_for(
        tmp_path,
        SLIPWAY_SMTP_URL="smtp+tls://deploys%40shop.example:p%40ss%3Aword@mail.shop.example:2525",
        SLIPWAY_EMAIL_FROM="Slipway <deploys@shop.example>",
        SLIPWAY_ALLOW_PRIVATE_NOTIFICATION_TARGETS="true",
    ) == [
        "mail.shop.example",
        2525,
        "deploys@shop.example",
        "p@ss:word",
        True,
        False,
        "Slipway <deploys@shop.example>",
        True,
    ]


def test_it_uses_each_schemes_usual_port(tmp_path):
    smtps = settings_for(tmp_path, SLIPWAY_SMTP_URL="smtps://mail.shop.example")
    assert smtps[:2] == ["mail.shop.example", 465] and smtps[4:6] == [False, True]
    plain = settings_for(tmp_path, SLIPWAY_SMTP_URL="smtp://127.0.0.1")
    assert plain[:2] == ["127.0.0.1", 25] and plain[4:6] == [False, False]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SLIPWAY_SMTP_URL", "http://mail.shop.example"),
        ("SLIPWAY_SMTP_URL", "smtp://mail.shop.example:port"),
        ("SLIPWAY_EMAIL_FROM", "Slipway"),
        ("SLIPWAY_ALLOW_PRIVATE_NOTIFICATION_TARGETS", "sometimes"),
    ],
)
def test_it_names_the_variable_that_holds_a_bad_value(tmp_path, variable, value):
    result = manage("check", env=clean_env(SLIPWAY_DATA_DIR=str(tmp_path), **{variable: value}))
    assert result.returncode != 0
    assert variable in result.stderr and "ConfigurationError" in result.stderr
