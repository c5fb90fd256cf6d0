"""After-rollback commands: they run after a rollback's switch (and after a server is switched
back for a failed check), with %rollback% and the two releases' revisions, never in a
deployment. Real sshd servers."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from builds.engine import pipeline
from builds.engine.health import HealthCheckSpec
from builds.engine.specs import StrategySpec
from tests.engine.test_shell_values import _hostile
from tests.support.engine import RecordingReporter, after, deploy_spec, server_for

RECORD = (
    "echo %rollback% %startrev% %endrev% %release% %previous_release_path% "
    ">> %deploy_path%/after-rollback"
)
SWITCH_RECORD = "echo %rollback% %endrev% >> %deploy_path%/after-switch"


def _commands(*, once: bool = False) -> tuple[pipeline.CommandSpec, ...]:
    return (
        pipeline.CommandSpec(command=RECORD, stage="after_rollback", run_once=once),
        pipeline.CommandSpec(command=SWITCH_RECORD, stage="after_switch"),
    )


def _lines(target, name: str) -> list[str]:
    path = target.deploy_path / name
    return path.read_text().splitlines() if path.exists() else []


def _a_then_b(repo, tmp_path, servers, **options):
    """A, then B live on ``servers``: (servers as B left them, A's results, B's results)."""
    a = repo.commit({"index.html": "A\n"}, "A")
    first = pipeline.deploy(deploy_spec(repo, tmp_path, servers, a, **options), RecordingReporter())
    assert first.ok, [r.error for r in first.servers]
    servers = [after(first, server) for server in servers]
    b = repo.commit({"index.html": "B\n"}, "B")
    second = pipeline.deploy(
        deploy_spec(repo, tmp_path, servers, b, deployment_id=2, **options), RecordingReporter()
    )
    assert second.ok, [r.error for r in second.servers]
    return [after(second, server) for server in servers], first, second


def test_a_rollback_runs_them_with_the_revisions_it_goes_between_and_a_deployment_never(
    sshd_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    server = server_for(sshd_target)
    [server], first, second = _a_then_b(repo, tmp_path, [server], commands=_commands())
    assert _lines(sshd_target, "after-rollback") == [], "no deployment runs them"
    assert _lines(sshd_target, "after-switch") == [
        f"0 {first.revision}",
        f"0 {second.revision}",
    ]
    a_name, b_name = first.servers[0].release, second.servers[0].release
    reporter = RecordingReporter()

    [back] = pipeline.rollback(
        pipeline.RollbackSpec(
            deployment_id=3,
            project="Shop",
            servers=(server,),
            targets={1: a_name or ""},
            revisions={1: first.revision},
            commands=_commands(),
        ),
        reporter,
    )

    assert back.ok, back.error
    releases = sshd_target.deploy_path / "releases"
    assert _lines(sshd_target, "after-rollback") == [
        f"1 {second.revision} {first.revision} {a_name} {releases / b_name}"
    ]
    assert _lines(sshd_target, "after-switch")[-1] == f"1 {first.revision}"
    steps = [name for name, server_id, _ in reporter.steps if server_id == 1]
    assert steps.index("commands after rollback") < steps.index("commands after switch")


def test_a_server_switched_back_for_a_failed_check_runs_them(
    sshd_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    server = server_for(sshd_target)
    a = repo.commit({"index.html": "A\n"}, "A")
    first = pipeline.deploy(
        deploy_spec(repo, tmp_path, [server], a, commands=_commands()), RecordingReporter()
    )
    server = after(first, server)
    b = repo.commit({"index.html": "B\n"}, "B")
    sick = HealthCheckSpec(kind="command", command="exit 1", retries=1)

    result = pipeline.deploy(
        deploy_spec(
            repo,
            tmp_path,
            [server],
            b,
            deployment_id=2,
            commands=_commands(),
            health_checks=(sick,),
        ),
        RecordingReporter(),
    )

    [outcome] = result.servers
    assert outcome.rolled_back
    releases = sshd_target.deploy_path / "releases"
    b_name = sorted(p.name for p in releases.iterdir() if p.name != first.servers[0].release)[0]
    assert _lines(sshd_target, "after-rollback") == [
        f"1 {b} {a} {first.servers[0].release} {releases / b_name}"
    ]
    assert _lines(sshd_target, "after-switch") == [f"0 {a}", f"0 {b}", f"1 {a}"]


@pytest.mark.parametrize(
    "strategy",
    [StrategySpec(kind="parallel"), StrategySpec(kind="rolling", batch_size=1)],
    ids=["parallel", "rolling"],
)
def test_a_run_once_rollback_command_runs_on_one_server_of_the_rollback(
    strategy, sshd_factory, git_repo_factory, tmp_path
):
    targets = [sshd_factory() for _ in range(3)]
    servers = [server_for(target, n) for n, target in enumerate(targets, 1)]
    servers, first, _ = _a_then_b(git_repo_factory(), tmp_path, servers)
    names = {r.server_id: r.release or "" for r in first.servers}
    reporter = RecordingReporter()

    results = pipeline.rollback(
        pipeline.RollbackSpec(
            deployment_id=3,
            project="Shop",
            servers=tuple(servers),
            targets=names,
            revisions=dict.fromkeys(names, first.revision),
            commands=_commands(once=True),
            strategy=strategy,
        ),
        reporter,
    )

    assert all(r.ok for r in results), [r.error for r in results]
    assert [len(_lines(t, "after-rollback")) for t in targets] == [1, 0, 0]
    assert [len(_lines(t, "after-switch")) for t in targets] == [1, 1, 1]
    assert "Skipped (run once: it ran on web1)" in reporter.text


def test_a_rolling_deployment_that_fails_runs_a_run_once_rollback_command_once(
    sshd_factory, git_repo_factory, tmp_path
):
    targets = [sshd_factory() for _ in range(3)]
    servers = [server_for(target, n) for n, target in enumerate(targets, 1)]
    repo = git_repo_factory()
    a = repo.commit({"index.html": "A\n"}, "A")
    first = pipeline.deploy(deploy_spec(repo, tmp_path, servers, a), RecordingReporter())
    servers = [after(first, server) for server in servers]
    b = repo.commit({"index.html": "B\n"}, "B")
    # web2's check fails: web2 switches itself back, then web1 is switched back.
    sick = HealthCheckSpec(kind="command", command="exit 1", retries=1, server_ids=frozenset({2}))

    result = pipeline.deploy(
        deploy_spec(
            repo,
            tmp_path,
            servers,
            b,
            deployment_id=2,
            commands=_commands(once=True),
            health_checks=(sick,),
            strategy=StrategySpec(kind="rolling", batch_size=1),
        ),
        RecordingReporter(),
    )

    outcomes = {r.server_id: r for r in result.servers}
    assert outcomes[1].rolled_back and outcomes[2].rolled_back and outcomes[3].skipped
    assert sum(len(_lines(t, "after-rollback")) for t in targets) == 1
    assert len(_lines(targets[1], "after-rollback")) == 1, "web2 switched back first"


def test_values_in_rollback_commands_stay_data(sshd_target, git_repo_factory, tmp_path):
    marker_dir = sshd_target.deploy_path.parent
    values = _hostile(marker_dir)
    repo = git_repo_factory()
    server = dataclasses.replace(
        server_for(sshd_target), name=values["server"], environment=values["environment"]
    )
    writes = (
        "printf '%s|' %project% %server% '%environment%' \"%deployer%\" %branch% "
        "%previous_release_path% %startrev% %endrev% %rollback% > %deploy_path%/values"
    )
    commands = (pipeline.CommandSpec(command=writes, stage="after_rollback", run_once=True),)
    [server], first, second = _a_then_b(repo, tmp_path, [server])

    [back] = pipeline.rollback(
        pipeline.RollbackSpec(
            deployment_id=3,
            project=values["project"],
            servers=(server,),
            targets={1: first.servers[0].release or ""},
            revisions={1: first.revision},
            branch=values["branch"],
            deployer=values["deployer"],
            commands=commands,
        ),
        RecordingReporter(),
    )

    assert back.ok, back.error
    assert sorted(p.name for p in marker_dir.iterdir() if p.name.startswith("pwned")) == []
    b_path = sshd_target.deploy_path / "releases" / (second.servers[0].release or "")
    assert (sshd_target.deploy_path / "values").read_text() == "|".join(
        [
            values["project"],
            values["server"],
            values["environment"],
            values["deployer"],
            values["branch"],
            str(b_path),
            second.revision,
            first.revision,
            "1",
            "",
        ]
    )


def test_an_aborted_canary_deployment_runs_them_once_as_it_switches_the_canaries_back(
    sshd_factory, git_repo_factory, tmp_path
):
    targets = [sshd_factory() for _ in range(3)]
    servers = [server_for(target, n) for n, target in enumerate(targets, 1)]
    repo = git_repo_factory()
    a = repo.commit({"index.html": "A\n"}, "A")
    first = pipeline.deploy(deploy_spec(repo, tmp_path, servers, a), RecordingReporter())
    servers = [after(first, server) for server in servers]
    b = repo.commit({"index.html": "B\n"}, "B")
    reporter = RecordingReporter()

    def abort() -> None:
        assert reporter.waiting.wait(timeout=60)
        reporter.promote = False
        reporter.decided.set()

    deciding = threading.Thread(target=abort)
    deciding.start()
    result = pipeline.deploy(
        deploy_spec(
            repo,
            tmp_path,
            servers,
            b,
            deployment_id=2,
            commands=_commands(once=True),
            strategy=StrategySpec(kind="canary", canary_count=2, promotion="manual"),
        ),
        reporter,
    )
    deciding.join()

    outcomes = {r.server_id: r for r in result.servers}
    assert outcomes[1].rolled_back and outcomes[2].rolled_back
    reversed_lines = [line for t in targets[:2] for line in _lines(t, "after-rollback")]
    assert len(reversed_lines) == 1
    assert reversed_lines[0].startswith(f"1 {b} {a} ")
    assert _lines(targets[2], "after-rollback") == _lines(targets[2], "after-switch") == []
    assert "Waiting for someone to promote" in reporter.text
