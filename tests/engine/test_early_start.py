"""While the worker checks the revision out and lists it, the servers that go first are
already connected, locked and given their new release (rollout.EarlyStart); a deployment
that stops before delivering leaves them as they were. Real sshd targets and Git repositories."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest

from builds.engine import pipeline
from builds.engine.build import BuildCommandSpec
from builds.engine.errors import Cancelled
from tests.support.engine import RecordingReporter, after, deploy_spec, server_for


class CancelledDuringCheckout(RecordingReporter):
    """Cancels the deployment once the checkout starts and the early start has ended."""

    @contextlib.contextmanager
    def step(self, name: str, server: int | None = None) -> Iterator[None]:
        if name == "checkout":
            waited = 0
            while not any(step[0] == "prepare" for step in self.steps) and waited < 3000:
                time.sleep(0.01)
                waited += 1
            self.cancel.set()
        with super().step(name, server):
            yield


def _early_steps(reporter: RecordingReporter) -> list[tuple[str, int | None, str]]:
    return [step for step in reporter.steps if step[0] == "prepare"]


def test_it_starts_the_release_on_the_server_before_the_build_is_listed(
    sshd_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit({"index.php": "A\n"}, "A")
    server = server_for(sshd_target)
    first = pipeline.deploy(deploy_spec(repo, tmp_path, [server], a), RecordingReporter())
    b = repo.commit({"index.php": "B\n", "new.txt": "new\n"}, "B")
    reporter = RecordingReporter()

    second = pipeline.deploy(
        deploy_spec(repo, tmp_path, [after(first, server)], b, deployment_id=2), reporter
    )

    assert second.ok, second.servers[0].error
    assert _early_steps(reporter) == [("prepare", server.id, "succeeded")]
    live = (sshd_target.deploy_path / "current").resolve()
    assert live.name == second.servers[0].release
    assert (live / "index.php").read_text() == "B\n" and (live / "new.txt").exists()
    assert not (live / ".slipway-unfinished").exists()
    assert not (sshd_target.deploy_path / ".slipway" / "lock").exists()


def test_it_waits_for_the_build_when_there_are_build_commands(
    sshd_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit({"index.php": "A\n"}, "A")
    reporter = RecordingReporter()

    result = pipeline.deploy(
        deploy_spec(
            repo,
            tmp_path,
            [server_for(sshd_target)],
            a,
            build={"build_commands": (BuildCommandSpec(command="echo built > built.txt"),)},
        ),
        reporter,
    )

    assert result.ok, result.servers[0].error
    assert _early_steps(reporter) == []
    assert (sshd_target.deploy_path / "current" / "built.txt").exists()


def test_a_deployment_cancelled_during_checkout_leaves_no_lock_and_no_release(
    sshd_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit({"index.php": "A\n"}, "A")
    server = server_for(sshd_target)
    first = pipeline.deploy(deploy_spec(repo, tmp_path, [server], a), RecordingReporter())
    b = repo.commit({"index.php": "B\n"}, "B")
    reporter = CancelledDuringCheckout()

    with pytest.raises(Cancelled):
        pipeline.deploy(
            deploy_spec(repo, tmp_path, [after(first, server)], b, deployment_id=2), reporter
        )

    assert _early_steps(reporter) == [("prepare", server.id, "succeeded")]
    releases = sorted(p.name for p in (sshd_target.deploy_path / "releases").iterdir())
    assert releases == [first.servers[0].release]
    assert (sshd_target.deploy_path / "current" / "index.php").read_text() == "A\n"
    assert not (sshd_target.deploy_path / ".slipway" / "lock").exists()
