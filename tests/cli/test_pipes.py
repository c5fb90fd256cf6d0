"""`slipway` in a pipe, a file and a terminal: each server's lines carry its name, colours
only reach a terminal (and not with NO_COLOR), and a reader that goes away ends it quietly."""

from __future__ import annotations

import json
import os
import pty
import subprocess

import pytest

from tests.cli.support import SLIPWAY, slipway

COLOURED_BUILD = r"printf 'plain \033[1;31mred\033[0m end\n'"


@pytest.fixture
def second_server(served, project, sshd_factory):
    """A second server, web2, on its own sshd target."""
    api = project["api"]
    target = sshd_factory()
    target.authorize(api.get(f"/projects/{project['slug']}/").json()["public_key"])
    server = api.post(
        f"/projects/{project['slug']}/servers/",
        json={
            "name": "web2",
            "hostname": target.hostname,
            "port": target.port,
            "username": target.username,
            "deploy_path": str(target.deploy_path),
        },
    )
    assert server.status_code == 201, server.text
    server_id = server.json()["id"]
    check = api.post(f"/projects/{project['slug']}/servers/{server_id}/check/").json()
    trust = api.post(
        f"/projects/{project['slug']}/servers/{server_id}/trust/",
        json={"fingerprint": check["host_key_fingerprint"]},
    )
    assert trust.status_code == 200, trust.text
    return target


def _latest_deployment_id(project) -> int:
    listed = project["api"].get(f"/projects/{project['slug']}/deployments/").json()
    latest = listed["results"][0] if isinstance(listed, dict) else listed[0]
    return int(latest["id"])


def test_it_names_the_server_on_each_of_its_lines(served, project, second_server):
    result = slipway(served, "deploy", str(project["slug"]), "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    switched = [line for line in lines if "current → releases/" in line]
    assert len(switched) == 2, result.stdout
    assert sorted(line.split(" | ", 1)[0] for line in switched) == ["web1", "web2"]
    assert len(set(switched)) == 2  # no line printed twice alike

    logged = slipway(served, "log", str(_latest_deployment_id(project)))
    assert logged.returncode == 0, logged.stderr
    assert sorted(line for line in logged.stdout.splitlines() if "current →" in line) == sorted(
        switched
    )


def test_it_writes_no_colours_into_a_pipe_or_file(served, project):
    added = project["api"].post(
        f"/projects/{project['slug']}/build-commands/", json={"command": COLOURED_BUILD}
    )
    assert added.status_code == 201, added.text
    piped = slipway(served, "deploy", str(project["slug"]), "--wait")
    assert piped.returncode == 0, piped.stdout + piped.stderr
    assert "plain red end" in piped.stdout
    assert "\x1b" not in piped.stdout

    forced = slipway(served, "--color", "always", "log", str(_latest_deployment_id(project)))
    assert "plain \x1b[1;31mred\x1b[0m end" in forced.stdout


def _on_a_terminal(served, *arguments: str, **extra_env: str) -> str:
    """What `slipway ARGUMENTS` writes to a real pseudo-terminal."""
    controller, terminal = pty.openpty()
    env = {**os.environ, "SLIPWAY_URL": served["url"], "SLIPWAY_TOKEN": served["token"]}
    env.pop("NO_COLOR", None)
    env.update(extra_env)
    process = subprocess.Popen(
        [SLIPWAY, *arguments], stdout=terminal, stderr=terminal, stdin=subprocess.DEVNULL, env=env
    )
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the terminal's other side closed
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    assert process.wait(timeout=60) == 0, output
    return output.decode()


def test_it_keeps_colours_on_a_terminal_unless_no_color_is_set(served, project):
    added = project["api"].post(
        f"/projects/{project['slug']}/build-commands/", json={"command": COLOURED_BUILD}
    )
    assert added.status_code == 201, added.text
    assert slipway(served, "deploy", str(project["slug"]), "--wait").returncode == 0
    deployment_id = str(_latest_deployment_id(project))

    assert "plain \x1b[1;31mred\x1b[0m end" in _on_a_terminal(served, "log", deployment_id)
    plain = _on_a_terminal(served, "log", deployment_id, NO_COLOR="1")
    assert "plain red end" in plain and "\x1b" not in plain


def _piped_to_head(served, *arguments: str) -> tuple[int, str, str]:
    """`slipway ARGUMENTS | head -n 1` in a shell: slipway's exit code, head's output and
    slipway's stderr."""
    command = f'"$SLIPWAY" {" ".join(arguments)} 2>"$ERRORS" | head -n 1; echo "${{PIPESTATUS[0]}}"'
    errors = os.path.join(served["log"] + ".stderr")
    result = subprocess.run(
        ["bash", "-c", command],
        env={
            **os.environ,
            "SLIPWAY": SLIPWAY,
            "ERRORS": errors,
            "SLIPWAY_URL": served["url"],
            "SLIPWAY_TOKEN": served["token"],
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    *shown, code = result.stdout.splitlines()
    with open(errors) as handle:
        return int(code), "\n".join(shown), handle.read()


def test_it_ends_quietly_when_the_reader_goes_away(served, project):
    # Far more than a pipe holds (64 KiB), so that slipway is still writing when head leaves.
    added = project["api"].post(
        f"/projects/{project['slug']}/build-commands/",
        json={"command": "seq -f 'line %g of a long build log' 1 20000"},
    )
    assert added.status_code == 201, added.text
    assert slipway(served, "deploy", str(project["slug"]), "--wait").returncode == 0
    deployment_id = str(_latest_deployment_id(project))
    whole = slipway(served, "--json", "log", deployment_id)
    assert len(whole.stdout) > 1_000_000
    assert len(json.loads(whole.stdout)) > 20000

    for arguments in (("--json", "log", deployment_id), ("log", deployment_id)):
        code, shown, errors = _piped_to_head(served, *arguments)
        assert shown, arguments
        assert code in (0, 141), (arguments, code, errors)
        assert errors == "", (arguments, errors)
