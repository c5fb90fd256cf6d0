"""`slipway drift`: the served Slipway (embedded mode: its in-process worker runs the check)
compares the live release with what it deployed; exit 0 when clean, 1 with the files listed
when a file was edited on the server."""

from __future__ import annotations

import json

from tests.cli.support import slipway


def test_drift_says_clean_then_lists_a_file_edited_on_the_server(served, project, sshd_target):
    slug = str(project["slug"])
    never = slipway(served, "drift", slug, "--server", "web1", "--last")
    assert never.returncode == 3 and "not been checked" in never.stderr
    assert slipway(served, "deploy", slug, "--wait").returncode == 0

    clean = slipway(served, "drift", slug, "--server", "web1")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "web1: clean" in clean.stdout and "1 files compared, none changed" in clean.stdout

    (sshd_target.deploy_path / "current" / "index.html").write_text("defaced\n")
    drifted = slipway(served, "drift", slug, "--server", "web1")
    assert drifted.returncode == 1, drifted.stdout + drifted.stderr
    assert "web1: drifted" in drifted.stdout and "1 changed, 0 added, 0 removed" in drifted.stdout
    assert "index.html  changed  8" in drifted.stdout

    last = slipway(served, "--json", "drift", slug, "--server", "web1", "--last")
    assert last.returncode == 1
    assert [f["path"] for f in json.loads(last.stdout)["files"]] == ["index.html"]
