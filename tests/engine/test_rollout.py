"""Strategies across five real sshd targets, each serving its `current` release over HTTP."""

from __future__ import annotations

import shutil
import threading

import pytest

from builds.engine import pipeline
from builds.engine.health import HealthCheckSpec
from builds.engine.specs import ConfigFileSpec, StrategySpec
from tests.support.engine import RecordingReporter, after, deploy_spec, server_for


@pytest.fixture
def fleet(sshd_factory, release_server_factory):
    """Five servers, each with a web server answering from its current release."""
    targets = [sshd_factory() for _ in range(5)]
    webs = [release_server_factory(target.deploy_path) for target in targets]
    servers = [server_for(target, n + 1) for n, target in enumerate(targets)]
    checks = tuple(
        HealthCheckSpec(
            kind="http",
            url=f"{web.url}/health.txt",
            body_contains="healthy",
            retries=2,
            interval_seconds=0.2,
            timeout_seconds=2,
            server_ids=frozenset({server.id}),
        )
        for web, server in zip(webs, servers, strict=True)
    )
    return targets, servers, checks


def _live(target) -> str:
    current = target.deploy_path / "current"
    return current.resolve().name if current.is_symlink() else ""


def _health_files(bad: set[int]) -> tuple[ConfigFileSpec, ...]:
    good_ids = frozenset(n for n in range(1, 6) if n not in bad)
    files = [ConfigFileSpec(path="health.txt", body="healthy on %server%\n", server_ids=good_ids)]
    if bad:
        files.append(
            ConfigFileSpec(
                path="health.txt", body="unhealthy on %server%\n", server_ids=frozenset(bad)
            )
        )
    return tuple(files)


def _first_release(repo, tmp_path, fleet_):
    targets, servers, checks = fleet_
    a = repo.commit({"index.html": "A\n"}, "A")
    result = pipeline.deploy(
        deploy_spec(
            repo, tmp_path, servers, a, config_files=_health_files(set()), health_checks=checks
        ),
        RecordingReporter(),
    )
    assert result.ok, [r.error for r in result.servers]
    return [after(result, server) for server in servers], [_live(t) for t in targets]


def test_rolling_stops_at_the_unhealthy_third_server_and_rolls_back_the_first_two(
    fleet, git_repo_factory, tmp_path
):
    targets, _, checks = fleet
    repo = git_repo_factory()
    servers, old = _first_release(repo, tmp_path, fleet)
    b = repo.commit({"index.html": "B\n"}, "B")
    reporter = RecordingReporter()
    spec = deploy_spec(
        repo,
        tmp_path,
        servers,
        b,
        deployment_id=2,
        config_files=_health_files({3}),
        health_checks=checks,
        strategy=StrategySpec(kind="rolling", batch_size=1),
    )
    result = pipeline.deploy(spec, reporter)

    assert not result.ok
    assert [_live(t) for t in targets] == old, (
        "servers 1-3 are back on the old release, 4-5 untouched"
    )
    outcomes = {r.server_id: r for r in result.servers}
    assert outcomes[3].rolled_back
    assert "Health check" in outcomes[3].reason and "503" in outcomes[3].reason
    assert outcomes[1].rolled_back and outcomes[2].rolled_back
    assert outcomes[1].reason.startswith("web3 failed")
    assert outcomes[4].skipped and outcomes[5].skipped
    for untouched in targets[3:]:
        releases = sorted(p.name for p in (untouched.deploy_path / "releases").iterdir())
        assert releases == [old[3]] if untouched is targets[3] else [old[4]]
    text = reporter.text
    order = [
        text.index("Batch 1/5: web1"),
        text.index("Batch 2/5: web2"),
        text.index("Batch 3/5: web3"),
        text.index("unhealthy"),
        text.index("Rolled back: current"),  # web3 switches itself back first
        text.index("Batch 3 failed"),
        text.rindex("Rolled back: current"),  # then web1 and web2
    ]
    assert order == sorted(order), text
    assert "Batch 4/5" not in text


def test_prepare_then_switch_switches_nothing_when_one_preparation_fails(
    fleet, git_repo_factory, tmp_path
):
    targets, _, checks = fleet
    repo = git_repo_factory()
    servers, old = _first_release(repo, tmp_path, fleet)
    b = repo.commit({"index.html": "B\n"}, "B")
    failing = pipeline.CommandSpec(
        command="echo preparing fails here; exit 4",
        stage="before_switch",
        server_ids=frozenset({2}),
    )
    spec = deploy_spec(
        repo,
        tmp_path,
        servers,
        b,
        deployment_id=2,
        config_files=_health_files(set()),
        health_checks=checks,
        commands=(failing,),
        strategy=StrategySpec(kind="prepare_then_switch"),
    )
    result = pipeline.deploy(spec, RecordingReporter())
    assert not result.ok
    assert [_live(t) for t in targets] == old
    assert "exit code 4" in str({r.server_id: r for r in result.servers}[2].error)
    for target in targets:
        unfinished = [
            p
            for p in (target.deploy_path / "releases").iterdir()
            if (p / ".slipway-unfinished").exists()
        ]
        assert unfinished == []
        assert not (target.deploy_path / ".slipway" / "lock").exists()


def _canary(fleet_, repo, tmp_path, *, promote: bool):
    targets, _, checks = fleet_
    servers, old = _first_release(repo, tmp_path, fleet_)
    b = repo.commit({"index.html": "B\n"}, "B")
    reporter = RecordingReporter()
    spec = deploy_spec(
        repo,
        tmp_path,
        servers,
        b,
        deployment_id=2,
        config_files=_health_files(set()),
        health_checks=checks,
        strategy=StrategySpec(
            kind="canary", canary_count=1, canary_window_seconds=0.5, promotion="manual"
        ),
    )
    outcome: dict[str, object] = {}
    worker = threading.Thread(target=lambda: outcome.update(result=pipeline.deploy(spec, reporter)))
    worker.start()
    assert reporter.waiting.wait(timeout=120), reporter.text
    lives = [_live(t) for t in targets]
    assert lives[0] != old[0], "the canary runs the new release"
    assert lives[1:] == old[1:], "the others wait"
    assert {(server, state) for server, state, _ in reporter.states} >= {
        (n, "waiting") for n in range(2, 6)
    }
    reporter.promote = promote
    reporter.decided.set()
    worker.join(timeout=120)
    return targets, old, outcome["result"]


def test_a_manual_canary_switches_only_the_canary_until_promoted(fleet, git_repo_factory, tmp_path):
    targets, old, result = _canary(fleet, git_repo_factory(), tmp_path, promote=True)
    assert result.ok
    assert all(
        live != before for live, before in zip([_live(t) for t in targets], old, strict=True)
    )


def test_cancelling_a_waiting_canary_rolls_it_back(fleet, git_repo_factory, tmp_path):
    targets, old, result = _canary(fleet, git_repo_factory(), tmp_path, promote=False)
    assert not result.ok
    assert [_live(t) for t in targets] == old
    outcomes = {r.server_id: r for r in result.servers}
    assert outcomes[1].rolled_back
    assert all(outcomes[n].cancelled for n in range(2, 6))


def test_a_failed_check_after_the_switch_rolls_that_server_back_by_itself(
    sshd_target, release_server_factory, git_repo_factory, tmp_path
):
    web = release_server_factory(sshd_target.deploy_path)
    check = HealthCheckSpec(
        kind="http", url=f"{web.url}/health.txt", retries=3, interval_seconds=0.1, timeout_seconds=2
    )
    repo = git_repo_factory()
    a = repo.commit({"health.txt": "healthy\n"}, "A")
    server = server_for(sshd_target)
    first = pipeline.deploy(
        deploy_spec(repo, tmp_path, [server], a, health_checks=(check,)), RecordingReporter()
    )
    assert first.ok
    server = after(first, server)
    good = _live(sshd_target)
    b = repo.commit({"health.txt": "unhealthy\n"}, "B breaks the health endpoint")
    reporter = RecordingReporter()
    second = pipeline.deploy(
        deploy_spec(repo, tmp_path, [server], b, deployment_id=2, health_checks=(check,)), reporter
    )
    outcome = second.servers[0]
    assert not second.ok
    assert outcome.rolled_back
    assert "failed after 3 attempts" in outcome.reason and "503" in outcome.reason
    assert _live(sshd_target) == good
    assert reporter.text.count(": attempt ") == 3
    assert (sshd_target.deploy_path / "current" / "health.txt").read_text() == "healthy\n"


# --------------------------------------------------------------------------- rollbacks


def _two_releases(repo, tmp_path, fleet_):
    """A then B live on the five servers: the servers as B left them, and A's names."""
    targets, _, checks = fleet_
    servers, a_names = _first_release(repo, tmp_path, fleet_)
    b = repo.commit({"index.html": "B\n"}, "B")
    result = pipeline.deploy(
        deploy_spec(
            repo,
            tmp_path,
            servers,
            b,
            deployment_id=2,
            config_files=_health_files(set()),
            health_checks=checks,
        ),
        RecordingReporter(),
    )
    assert result.ok, [r.error for r in result.servers]
    return [after(result, server) for server in servers], a_names, [_live(t) for t in targets]


def _rollback_spec(servers, names, checks, strategy) -> pipeline.RollbackSpec:
    return pipeline.RollbackSpec(
        deployment_id=3,
        project="shop",
        servers=tuple(servers),
        targets={server.id: name for server, name in zip(servers, names, strict=True)},
        health_checks=checks,
        strategy=strategy,
    )


def test_a_prepare_then_switch_rollback_switches_nobody_when_one_release_is_gone(
    fleet, git_repo_factory, tmp_path
):
    targets, _, checks = fleet
    servers, a_names, b_names = _two_releases(git_repo_factory(), tmp_path, fleet)
    shutil.rmtree(targets[3].deploy_path / "releases" / a_names[3])

    results = pipeline.rollback(
        _rollback_spec(servers, a_names, checks, StrategySpec(kind="prepare_then_switch")),
        RecordingReporter(),
    )

    assert [_live(t) for t in targets] == b_names, "nobody switched"
    outcomes = {r.server_id: r for r in results}
    assert "no longer on the server" in str(outcomes[4].error)
    assert all(outcomes[n].skipped for n in (1, 2, 3, 5))
    assert not (targets[0].deploy_path / ".slipway" / "lock").exists(), "locks released"


def test_a_canary_rollback_goes_back_when_the_canary_is_unhealthy_on_the_old_release(
    fleet, git_repo_factory, tmp_path
):
    targets, _, checks = fleet
    servers, a_names, b_names = _two_releases(git_repo_factory(), tmp_path, fleet)
    (targets[0].deploy_path / "releases" / a_names[0] / "health.txt").write_text("sick\n")
    reporter = RecordingReporter()

    results = pipeline.rollback(
        _rollback_spec(servers, a_names, checks, StrategySpec(kind="canary", canary_count=1)),
        reporter,
    )

    assert [_live(t) for t in targets] == b_names
    outcomes = {r.server_id: r for r in results}
    assert outcomes[1].rolled_back and outcomes[1].release == b_names[0]
    assert all(outcomes[n].skipped for n in (2, 3, 4, 5)), "the rest never touched"
    assert "Canary: web1" in reporter.text


def test_a_healthy_rolling_rollback_takes_every_server_back_batch_by_batch(
    fleet, git_repo_factory, tmp_path
):
    targets, _, checks = fleet
    servers, a_names, _ = _two_releases(git_repo_factory(), tmp_path, fleet)
    reporter = RecordingReporter()

    results = pipeline.rollback(
        _rollback_spec(servers, a_names, checks, StrategySpec(kind="rolling", batch_size=2)),
        reporter,
    )

    assert all(r.ok for r in results), [r.error for r in results]
    assert [_live(t) for t in targets] == a_names
    text = reporter.text
    batches = [text.index(f"Batch {n}/3") for n in (1, 2, 3)]
    assert batches == sorted(batches)
    checked = [s for s in reporter.steps if s[0] == "health checks after switch"]
    assert sorted(server or 0 for _, server, _ in checked) == [1, 2, 3, 4, 5]
