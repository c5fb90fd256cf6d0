"""A config file saved into a template keeps its shape and loses every value that could be
a secret (builds.engine.masking.config_file_skeleton)."""

from __future__ import annotations

from builds.engine.masking import config_file_secrets, config_file_skeleton

DOTENV = """\
# production settings: password is hunter2
APP_NAME=Shop
APP_KEY=base64:c2VjcmV0LWFwcC1rZXktMTIzNDU2Nzg5MA==
APP_PATH=%release_path%
export DB_PASSWORD="s3cr3t-pass"

[mysqld]
password = s3cr3t-ini
"""


def test_it_keeps_keys_sections_and_blank_lines_and_drops_every_value():
    assert config_file_skeleton(DOTENV) == (
        "APP_NAME=\nAPP_KEY=\nAPP_PATH=%release_path%\nexport DB_PASSWORD=\n\n[mysqld]\npassword =\n"
    )


def test_it_drops_what_is_not_an_assignment():
    pem = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
    assert config_file_skeleton(pem) == ""


def test_it_keeps_yaml_and_php_keys():
    yaml = "production:\n  password: hunter2-yaml\n"
    php = "<?php return [\n    'token' => 'tok-123456789',\n];\n"
    assert config_file_skeleton(yaml) == "production:\n  password:\n"
    assert config_file_skeleton(php) == "    'token' =>\n"


def test_no_value_the_log_would_mask_is_left():
    skeleton = config_file_skeleton(DOTENV)
    for value in ("hunter2", "Shop", "c2VjcmV0", "s3cr3t-pass", "s3cr3t-ini"):
        assert value not in skeleton
    assert "Shop" in config_file_secrets(DOTENV)
