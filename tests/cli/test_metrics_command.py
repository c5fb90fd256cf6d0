"""`slipway metrics` after real deployments to an sshd target: the first deployment has no
range to measure, the second's lead time runs from the first commit it brought (recorded by
the runner from the repository); the second is a fix ("fix: ..."), so the first counts as a
failed change restored by it; --csv prints the export."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from datetime import datetime

from tests.cli.support import slipway


def _author_date(repo, sha: str) -> datetime:
    shown = subprocess.run(
        ["git", "-C", str(repo.path), "show", "-s", "--format=%aI", sha],
        capture_output=True,
        text=True,
        check=True,
    )
    return datetime.fromisoformat(shown.stdout.strip())


def test_metrics_measure_the_lead_time_of_a_real_deployment(served, project):
    slug = str(project["slug"])
    repo = project["repo"]
    assert slipway(served, "deploy", slug, "--wait").returncode == 0
    first_new = repo.commit({"index.html": "second\n"}, "Second")
    repo.commit({"index.html": "third\n"}, "fix: third")
    assert slipway(served, "deploy", slug, "--wait").returncode == 0

    shown = slipway(served, "metrics", slug, "--days", "7")
    as_json = slipway(served, "metrics", slug, "--json")
    exported = slipway(served, "metrics", slug, "--csv", "deployments")

    assert shown.returncode == 0, shown.stderr
    assert "every server, last 7 days" in shown.stdout
    assert "Change failure rate    50.0% (1 of 2)" in shown.stdout
    report = json.loads(as_json.stdout)
    assert (report["successful_deployments"], report["lead_time_unmeasured"]) == (2, 1)
    assert report["lead_time_seconds"] is not None and report["lead_time_seconds"] >= 0
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert [row["outcome"] for row in rows] == ["live", "live"]
    assert [row["failure_reason"] for row in rows] == ["fixed", ""]
    assert rows[0]["restored_by"] == rows[1]["deployment"]
    assert rows[0]["first_commit_at"] == ""
    first_commit_at = datetime.fromisoformat(rows[1]["first_commit_at"].replace("Z", "+00:00"))
    assert first_commit_at == _author_date(repo, first_new)


def test_a_bad_window_is_an_api_error_naming_the_field(served, project):
    refused = slipway(served, "metrics", str(project["slug"]), "--days", "0")

    assert refused.returncode == 3
    assert "days" in refused.stderr
