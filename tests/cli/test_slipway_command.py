"""The `slipway` console script against a real `manage.py serve` (embedded, as `make run`)."""

from __future__ import annotations

import json
import os
import stat
import subprocess

from tests.cli.support import SLIPWAY, slipway
from tests.support.processes import free_port, manage


def test_deploy_wait_streams_the_log_and_exits_0(served, project, sshd_target):
    result = slipway(served, "deploy", str(project["slug"]), "--server", "web1", "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Deploying main at" in result.stdout
    assert "current → releases/" in result.stdout
    assert result.stdout.rstrip().splitlines()[-1].endswith("succeeded")
    assert (sshd_target.deploy_path / "current" / "index.html").read_text() == "first\n"


def test_deploy_wait_exits_non_zero_when_a_build_command_fails(served, project, sshd_target):
    added = project["api"].post(
        f"/projects/{project['slug']}/build-commands/", json={"command": "echo compiling; exit 9"}
    )
    assert added.status_code == 201, added.text
    result = slipway(served, "deploy", str(project["slug"]), "--wait")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "compiling" in result.stdout
    assert "exit code 9" in result.stdout
    assert not (sshd_target.deploy_path / "current").exists()


def test_rollback_status_log_and_projects(served, project, sshd_target):
    slug = str(project["slug"])
    assert slipway(served, "deploy", slug, "--wait").returncode == 0
    first = (sshd_target.deploy_path / "current").resolve()
    project["repo"].commit({"index.html": "second\n"}, "Second")
    assert slipway(served, "deploy", slug, "--wait").returncode == 0
    assert (sshd_target.deploy_path / "current" / "index.html").read_text() == "second\n"

    back = slipway(served, "rollback", slug, "--server", "web1", "--wait")
    assert back.returncode == 0, back.stdout + back.stderr
    assert (sshd_target.deploy_path / "current").resolve() == first
    # Where it goes is printed before the rollback is asked for.
    said = back.stdout.splitlines()[0]
    assert said.startswith(f"web1: current → releases/{first.name} (")
    assert said.endswith(f"{first.name.rsplit('-', 1)[1]})")

    status = slipway(served, "status", slug)
    assert status.returncode == 0
    assert "web1" in status.stdout and "rollback" in status.stdout
    as_json = json.loads(slipway(served, "projects", "--json").stdout)
    assert slug in [p["slug"] for p in as_json]
    deployment_id = json.loads(slipway(served, "status", slug, "--json").stdout)["deployments"][0][
        "id"
    ]
    log = slipway(served, "log", str(deployment_id))
    assert log.returncode == 0 and "current → releases/" in log.stdout


def test_login_writes_a_private_config_and_bad_input_gets_stable_exit_codes(served, tmp_path):
    login = slipway(
        served, "login", "--url", served["url"], "--token", served["token"], home=tmp_path
    )
    assert login.returncode == 0, login.stderr
    config = tmp_path / ".config" / "slipway" / "config.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert slipway(served, "projects", home=tmp_path).returncode == 0
    assert slipway(served, "deploy", "no-such-project", home=tmp_path).returncode == 3
    wrong = subprocess.run(
        [SLIPWAY, "projects"],
        env={**os.environ, "SLIPWAY_URL": served["url"], "SLIPWAY_TOKEN": "slw_wrong"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.returncode == 5
    assert "token" in wrong.stderr.lower()
    unreachable = subprocess.run(
        [SLIPWAY, "projects"],
        env={
            **os.environ,
            "SLIPWAY_URL": f"http://127.0.0.1:{free_port()}",
            "SLIPWAY_TOKEN": "slw_x",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unreachable.returncode == 4
    assert slipway(served, "deploy", home=tmp_path / "nobody").returncode == 2


# A build that prints what a hostile repository could: a window title change, a clear
# screen, a cursor jump, a hyperlink to elsewhere, a bell, a backspace that hides a word,
# 8-bit C1 controls; and colours, which are welcome.
HOSTILE_BUILD = (
    r"printf 'start\033]0;pwned title\007\033[2J\033[H\033[5A"
    r"\033]8;;https://evil.example/\033\\click\033]8;;\033\\"
    r"\007safe\010\010\010\010\302\23331m\302\235"
    "2;t\007"
    r"\033[1;31mred\033[0m\tend\n'"
)


def test_it_prints_a_hostile_log_line_with_colours_only(served, project):
    added = project["api"].post(
        f"/projects/{project['slug']}/build-commands/", json={"command": HOSTILE_BUILD}
    )
    assert added.status_code == 201, added.text
    result = slipway(served, "deploy", str(project["slug"]), "--wait", "--color", "always")
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("start"))
    assert line == "startclicksafe31m2;t\x1b[1;31mred\x1b[0m\tend"
    for control in ("\x1b]", "\x1b[2J", "\x1b[H", "\x07", "\x08", "\x9b", "\x9d"):
        assert control not in result.stdout
    # The stored log keeps what the build printed: only the terminal's view is cleaned.
    deployment = project["api"].get(f"/projects/{project['slug']}/deployments/").json()
    latest = deployment["results"][0] if isinstance(deployment, dict) else deployment[0]
    stored = project["api"].get(f"/deployments/{latest['id']}/log/").json()["lines"]
    assert any("\x1b]0;pwned title\x07" in line["text"] for line in stored)


def test_login_says_the_tokens_scope_and_expiry(served, tmp_path):
    issued = manage(
        "issue_token", "admin", "--scope", "deploy", "--expires-in-days", "5", env=served["env"]
    )
    token = issued.stdout.strip().splitlines()[-1]
    login = slipway(served, "login", "--url", served["url"], "--token", token, home=tmp_path)
    assert login.returncode == 0, login.stderr
    assert f"Token {token[:12]}…: scope deploy" in login.stdout
    assert "expires 20" in login.stdout
    forever = slipway(
        served, "login", "--url", served["url"], "--token", served["token"], home=tmp_path
    )
    assert "scope admin" in forever.stdout and "does not expire" in forever.stdout
