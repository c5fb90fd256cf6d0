"""`make run`'s path on a fresh machine: no DATABASE_URL, no REDIS_URL, no terminal."""

from __future__ import annotations

import re
import stat
import subprocess
import sys

import httpx

from tests.support.processes import ROOT, clean_env, free_port, manage, stop, wait_for_http


def test_it_serves_the_login_page_and_the_printed_admin_password_works(tmp_path):
    port = free_port()
    env = clean_env(SLIPWAY_DATA_DIR=str(tmp_path / "var"), SLIPWAY_BIND=f"127.0.0.1:{port}")
    assert manage("migrate", "--noinput", env=env).returncode == 0
    created = manage("ensure_admin", env=env)
    assert created.returncode == 0, created.stderr
    match = re.search(r"password:\s+(\S+)", created.stdout)
    assert match, created.stdout
    password = match.group(1)

    password_file = tmp_path / "var" / "admin-password.txt"
    assert password_file.read_text().strip() == password
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    key_file = tmp_path / "var" / "encryption.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # A second run leaves the admin alone and prints no password.
    again = manage("ensure_admin", env=env)
    assert again.returncode == 0 and "password" not in again.stdout

    server = subprocess.Popen(
        [sys.executable, "manage.py", "serve"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(base + "/healthz", server)
        with httpx.Client(base_url=base, timeout=10) as client:
            page = client.get("/login/")
            assert page.status_code == 200
            assert 'name="password"' in page.text
            token = client.cookies["csrftoken"]
            response = client.post(
                "/login/",
                data={"username": "admin", "password": password, "csrfmiddlewaretoken": token},
                headers={"Referer": base + "/login/"},
            )
            assert response.status_code == 302
            assert response.headers["location"] == "/"
            home = client.get("/")
            assert home.status_code == 200
            assert "Projects" in home.text
            # The in-process worker counts as the worker of every queue.
            health = client.get("/healthz").json()
            assert health["status"] == "ok", health
            assert health["broker"] == {"ok": True, "kind": "in-memory"}
            assert health["workers"]["count"] == 1
            assert health["workers"]["queues"]["deployments"] == 1
            wrong = httpx.post(
                base + "/login/",
                data={"username": "admin", "password": "not-it", "csrfmiddlewaretoken": token},
                cookies={"csrftoken": token},
                headers={"Referer": base + "/login/"},
            )
            assert (
                wrong.status_code == 200
                and "Please enter a correct username and password" in wrong.text
            )
    finally:
        output = stop(server)
    assert "Embedded worker started" in output


def test_it_uses_the_admin_password_from_the_environment(tmp_path):
    env = clean_env(SLIPWAY_DATA_DIR=str(tmp_path), SLIPWAY_ADMIN_PASSWORD="a-chosen-password-42")
    assert manage("migrate", "--noinput", env=env).returncode == 0
    created = manage("ensure_admin", env=env)
    assert "a-chosen-password-42" not in created.stdout
    check = manage(
        "shell",
        "-c",
        # With a request, as the sign-in page does: django-axes refuses sign-ins without one.
        "from django.contrib.auth import authenticate; from django.test import RequestFactory; "
        "print(bool(authenticate(RequestFactory().post('/login/'), username='admin', "
        "password='a-chosen-password-42')))",
        env=env,
    )
    assert check.stdout.strip().splitlines()[-1] == "True"
    assert not (tmp_path / "admin-password.txt").exists()
