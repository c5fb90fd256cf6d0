"""A config file saved into a template keeps its shape and loses every value that could be
a secret (builds.engine.masking.config_file_skeleton)."""

from __future__ import annotations

import re
import textwrap

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

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


def _generated_private_keys():
    """30 each of RSA 2048 and EC P-256 keys, in PKCS#8 and in OpenSSL's traditional form."""
    formats = (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL)
    for private_format in formats:
        for _ in range(30):
            for key in (
                rsa.generate_private_key(public_exponent=65537, key_size=2048),
                ec.generate_private_key(ec.SECP256R1()),
            ):
                yield key.private_bytes(
                    serialization.Encoding.PEM, private_format, serialization.NoEncryption()
                ).decode()


def test_no_line_of_a_private_key_is_kept():
    # About a quarter of these keys end in a line like "ZYY5OHLP8rqHlrkGkOPaD6RZjg==", which
    # reads as an assignment of "=" to a key made of key material.
    padded_like_an_assignment = 0
    for pem in _generated_private_keys():
        key_lines = [line for line in pem.splitlines() if not line.startswith("-----")]
        padded_like_an_assignment += bool(re.fullmatch(r"[A-Za-z0-9]+=+", key_lines[-1]))
        for body in (
            f"APP_NAME=Shop\n{pem}DB_HOST=%hostname%\n",
            f'APP_NAME=Shop\nPRIVATE_KEY="{pem}"\nDB_HOST=%hostname%\n',
            f"APP_NAME=Shop\ntls:\n  key: |\n{textwrap.indent(pem, '    ')}  port: 443\n",
        ):
            skeleton = config_file_skeleton(body)
            assert not set(skeleton.splitlines()) & set(key_lines), body
            assert not any(line.rstrip("=") in skeleton for line in key_lines if len(line) >= 8), (
                body
            )
        assert config_file_skeleton(f"APP_NAME=Shop\n{pem}DB_HOST=%hostname%\n") == (
            "APP_NAME=\nDB_HOST=%hostname%\n"
        )
    assert padded_like_an_assignment > 0


def test_it_drops_everything_after_a_key_that_does_not_end():
    body = "APP_NAME=Shop\n-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkq\nTOKEN=abc\n\n[db]\n"
    assert config_file_skeleton(body) == "APP_NAME=\n"


def test_it_keeps_only_keys_that_are_names():
    body = (
        "ZYY5OHLP8rqHlrkGkOPaD6RZjg==\n"  # the last line of a base64 block
        "aGVsbG8gd29ybGQgaGVsbG8gd29y: x\n"
        "1password=x\n"
        "clé=x\n"
        f"{'A' * 65}=x\n"
        "DATABASE_CONNECTION_POOL_SIZE=5\n"
        "MAXCONNECTIONSPERHOSTNAME=5\n"
        "spring.datasource.url=jdbc\n"
        "retries: 3\n"
    )
    assert config_file_skeleton(body) == (
        "DATABASE_CONNECTION_POOL_SIZE=\nMAXCONNECTIONSPERHOSTNAME=\nspring.datasource.url=\n"
        "retries:\n"
    )


def test_only_slipways_variables_count_as_variables():
    body = (
        "PASS=%cfgpasssecret%\n"
        "APP_PATH=%release_path%\n"
        "URL=%hostname%/%deploy_path%\n"
        "MIXED=%release_path%%token_value%\n"
    )
    assert config_file_skeleton(body) == ("PASS=\nAPP_PATH=%release_path%\nURL=\nMIXED=\n")
    assert "PASS=%cfgpasssecret%" in config_file_secrets(body)
    assert "%token_value%" in config_file_secrets(body)
