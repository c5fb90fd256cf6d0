"""Run-once commands: one server of a deployment runs them, whatever runs at once; the others
skip them, and say where they ran. Three real sshd servers; each count is what the command
appended on the servers themselves."""

from __future__ import annotations

import threading
import time

import pytest

from builds.engine import pipeline
from builds.engine.specs import StrategySpec
from tests.support.engine import RecordingReporter, after, deploy_spec, server_for

# Slow enough that the servers reach it while the first one still runs it.
MIGRATE = "sleep 1; echo migrating on %server%; echo %server% >> %shared_path%/migrated"


@pytest.fixture
def three(sshd_factory):
    targets = [sshd_factory() for _ in range(3)]
    return targets, [server_for(target, n) for n, target in enumerate(targets, 1)]


def _ran_on(targets) -> list[str]:
    """Every line a run-once command appended, on every server."""
    lines = []
    for target in targets:
        record = target.deploy_path / "shared" / "migrated"
        if record.exists():
            lines += record.read_text().splitlines()
    return lines


def _once(command: str = MIGRATE, stage: str = "before_switch", **options) -> pipeline.CommandSpec:
    return pipeline.CommandSpec(command=command, stage=stage, run_once=True, **options)


@pytest.mark.parametrize(
    "strategy",
    [
        StrategySpec(kind="parallel"),
        StrategySpec(kind="prepare_then_switch"),
        StrategySpec(kind="rolling", batch_size=1),
        StrategySpec(kind="rolling", batch_size=2),
        StrategySpec(kind="canary", canary_count=1),
    ],
    ids=["parallel", "prepare_then_switch", "rolling-1", "rolling-2", "canary"],
)
@pytest.mark.parametrize("stage", ["before_switch", "after_switch"])
def test_a_run_once_command_runs_on_the_first_server_only(
    strategy, stage, three, git_repo_factory, tmp_path
):
    targets, servers = three
    repo = git_repo_factory()
    revision = repo.commit({"index.html": "A\n"}, "A")
    everywhere = pipeline.CommandSpec(command="echo every server: %server%", stage=stage)
    reporter = RecordingReporter()

    result = pipeline.deploy(
        deploy_spec(
            repo,
            tmp_path,
            servers,
            revision,
            commands=(_once(stage=stage), everywhere),
            shared_paths=("storage",),
            strategy=strategy,
        ),
        reporter,
    )

    assert result.ok, ([r.error for r in result.servers], reporter.text)
    assert _ran_on(targets) == ["web1"], reporter.text
    output = [(text, server) for stream, text, server in reporter.lines if stream != "system"]
    assert ("migrating on web1", 1) in output
    assert sum("migrating on" in text for text, _ in output) == 1
    assert {server for text, server in output if text.startswith("every server")} == {1, 2, 3}
    system = [(text, server) for stream, text, server in reporter.lines if stream == "system"]
    runs_here = [(text, server) for text, server in system if text.startswith("Runs once")]
    assert runs_here == [
        ("Runs once, here on web1: the other servers skip it: sleep 1; echo migrating on web1…", 1)
    ] or [server for _, server in runs_here] == [1], runs_here
    skipped = {server for text, server in system if text.startswith("Skipped (run once: it ran")}
    assert skipped == {2, 3}
    assert all(target.deploy_path.joinpath("current", "index.html").exists() for target in targets)


def test_the_next_server_runs_it_when_the_first_cannot_be_reached(
    three, git_repo_factory, tmp_path
):
    targets, servers = three
    targets[0].stop()
    repo = git_repo_factory()
    revision = repo.commit({"index.html": "A\n"}, "A")
    reporter = RecordingReporter()

    result = pipeline.deploy(
        deploy_spec(repo, tmp_path, servers, revision, commands=(_once(),)), reporter
    )

    outcomes = {r.server_id: r.ok for r in result.servers}
    assert outcomes == {1: False, 2: True, 3: True}
    assert _ran_on(targets) == ["web2"], reporter.text
    assert any(
        text.startswith("Skipped (run once: it ran on web2)") and server == 3
        for _, text, server in reporter.lines
    )


def test_a_failing_run_once_command_fails_the_deployment_on_every_server(
    three, git_repo_factory, tmp_path
):
    targets, servers = three
    repo = git_repo_factory()
    a = repo.commit({"index.html": "A\n"}, "A")
    first = pipeline.deploy(deploy_spec(repo, tmp_path, servers, a), RecordingReporter())
    servers = [after(first, server) for server in servers]
    live = [t.deploy_path.joinpath("current").resolve().name for t in targets]
    b = repo.commit({"index.html": "B\n"}, "B")
    reporter = RecordingReporter()

    result = pipeline.deploy(
        deploy_spec(
            repo,
            tmp_path,
            servers,
            b,
            deployment_id=2,
            commands=(
                _once(
                    "echo ran >> %deploy_path%/attempts; echo migration broke >&2; exit 3",
                    description="migrate",
                ),
            ),
        ),
        reporter,
    )

    assert not result.ok
    outcomes = {r.server_id: r for r in result.servers}
    assert "exit code 3" in str(outcomes[1].error)
    for other in (2, 3):
        assert "The run-once command 'migrate' failed on web1" in str(outcomes[other].error)
    attempts = [t.deploy_path / "attempts" for t in targets]
    assert [p.read_text() if p.exists() else "" for p in attempts] == ["ran\n", "", ""]
    assert [t.deploy_path.joinpath("current").resolve().name for t in targets] == live
    assert ("stderr", "migration broke", 1) in reporter.lines


def test_halt_on_error_off_lets_the_others_go_on_after_a_failed_run_once_command(
    three, git_repo_factory, tmp_path
):
    _, servers = three
    repo = git_repo_factory()
    revision = repo.commit({"index.html": "A\n"}, "A")
    reporter = RecordingReporter()

    result = pipeline.deploy(
        deploy_spec(
            repo,
            tmp_path,
            servers,
            revision,
            commands=(_once("exit 5", halt_on_error=False),),
        ),
        reporter,
    )

    assert result.ok, [r.error for r in result.servers]
    assert "Exited with 5; going on (halt on error is off)" in reporter.text


def test_with_prepare_then_switch_a_server_that_prepares_nothing_aside_is_not_waited_for(
    three, git_repo_factory, tmp_path
):
    # web1 takes its files in place at the switch, with all its commands: the others run
    # their before-switch commands while preparing, without waiting for it (no deadlock).
    targets, servers = three
    servers[0] = server_for(targets[0], 1, atomic=False)
    repo = git_repo_factory()
    revision = repo.commit({"index.html": "A\n"}, "A")
    reporter = RecordingReporter()

    result = pipeline.deploy(
        deploy_spec(
            repo,
            tmp_path,
            servers,
            revision,
            commands=(_once("echo %server% >> %deploy_path%/migrated"),),
            strategy=StrategySpec(kind="prepare_then_switch"),
        ),
        reporter,
    )

    assert result.ok, ([r.error for r in result.servers], reporter.text)
    ran = [
        (t.deploy_path / "migrated").read_text()
        for t in targets
        if (t.deploy_path / "migrated").exists()
    ]
    assert ran == ["web2\n"]
    assert any(
        text.startswith("Skipped (run once: it ran on web2)") and server == 1
        for _, text, server in reporter.lines
    )


def test_servers_waiting_for_a_run_once_command_stop_when_the_deployment_is_cancelled(
    three, git_repo_factory, tmp_path
):
    targets, servers = three
    repo = git_repo_factory()
    revision = repo.commit({"index.html": "A\n"}, "A")
    reporter = RecordingReporter()
    threading.Timer(2.0, reporter.cancel.set).start()
    started = time.monotonic()

    result = pipeline.deploy(
        deploy_spec(repo, tmp_path, servers, revision, commands=(_once("sleep 60"),)), reporter
    )

    assert time.monotonic() - started < 30
    assert all(r.cancelled for r in result.servers), [r.error for r in result.servers]
    assert not any((t.deploy_path / "current").exists() for t in targets)
