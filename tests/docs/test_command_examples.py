"""Every SSH command example in docs/ runs, as Slipway runs it, on two real sshd servers.

An example is a fenced block right after the line ``<!-- slipway-example: ssh-command -->``;
each block is one command. It runs as an after-switch command of a deployment to two servers
(`%variables%` exported as SLIPWAY_VAR_* references by the engine, as in production) and must
succeed on both. Tools an example calls that a test server lacks (php, npm, ...) are stand-ins
on PATH that record how they were called.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from builds.engine import pipeline
from tests.support.engine import RecordingReporter, after, deploy_spec, server_for

DOCS = Path(__file__).resolve().parents[2] / "docs"
MARKER = "<!-- slipway-example: ssh-command -->"
EXAMPLE = re.compile(re.escape(MARKER) + r"\n```[a-z]*\n(.*?)\n```", re.DOTALL)
STAND_INS = ("php", "composer", "npm", "node", "make", "python3")


def examples() -> list[tuple[str, str]]:
    """(where, command) for each marked example in docs/*.md."""
    found = []
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text()
        blocks = EXAMPLE.findall(text)
        assert len(blocks) == text.count(MARKER), f"{page.name}: a marker without a fenced block"
        found += [(f"{page.name}#{number}", block) for number, block in enumerate(blocks, 1)]
    return found


def test_the_docs_hold_marked_examples():
    assert len(examples()) >= 3
    assert any("%groupindex%" in command for _, command in examples())


def _stand_ins(root: Path) -> str:
    """A folder of recording stand-ins readable by the targets' deploy user; its path."""
    folder = root / "stand-ins"
    folder.mkdir()
    folder.chmod(0o755)
    for name in STAND_INS:
        tool = folder / name
        tool.write_text(f'#!/bin/sh\necho "{name} $*" >> "$PWD/.stand-ins-ran"\n')
        tool.chmod(0o755)
    return str(folder)


@pytest.fixture
def two_servers(sshd_factory):
    targets = [sshd_factory(), sshd_factory()]
    servers = [server_for(target, number) for number, target in enumerate(targets, 1)]
    return targets, servers


def _deploy(command, targets, servers, git_repo_factory, tmp_path):
    repo = git_repo_factory()
    revision = repo.commit({"index.html": "A\n", "artisan": "stand-in\n"}, "A")
    stand_ins = _stand_ins(targets[0].root)
    path = f"{stand_ins}:/usr/local/bin:/usr/bin:/bin"
    spec = deploy_spec(
        repo,
        tmp_path,
        servers,
        revision,
        commands=(pipeline.CommandSpec(command=command, stage="after_switch"),),
        server_env={"PATH": path},
    )
    reporter = RecordingReporter()
    return pipeline.deploy(spec, reporter), reporter


@pytest.mark.parametrize(("where", "command"), examples(), ids=[where for where, _ in examples()])
def test_each_example_succeeds_on_every_server(
    where, command, two_servers, git_repo_factory, tmp_path
):
    targets, servers = two_servers
    result, reporter = _deploy(command, targets, servers, git_repo_factory, tmp_path)
    assert result.ok, (where, [r.error for r in result.servers], reporter.text)
    for target in targets:
        assert (target.deploy_path / "current" / "index.html").read_text() == "A\n"


def _ran(target) -> str:
    record = target.deploy_path / "current" / ".stand-ins-ran"
    return record.read_text() if record.exists() else ""


def test_the_run_on_one_server_idiom_runs_on_the_first_server_only(
    two_servers, git_repo_factory, tmp_path
):
    [command] = [c for _, c in examples() if "%groupindex% = 1" in c]
    targets, servers = two_servers
    result, reporter = _deploy(command, targets, servers, git_repo_factory, tmp_path)
    assert result.ok, ([r.error for r in result.servers], reporter.text)
    assert _ran(targets[0]) == "php artisan migrate --force\n"
    assert _ran(targets[1]) == ""


def test_the_idiom_the_docs_warn_against_fails_on_the_second_server(
    two_servers, git_repo_factory, tmp_path
):
    # The form strategies.md used to recommend, kept here as the reason for the `if` form.
    targets, servers = two_servers
    result, _ = _deploy(
        "[ %groupindex% = 1 ] && php artisan migrate --force",
        targets,
        servers,
        git_repo_factory,
        tmp_path,
    )
    outcomes = {r.server_id: r.ok for r in result.servers}
    assert outcomes == {1: True, 2: False}


def test_the_rollback_example_reverses_in_the_release_left_and_only_in_a_rollback(
    two_servers, git_repo_factory, tmp_path
):
    [command] = [c for _, c in examples() if "%rollback% = 1" in c]
    targets, servers = two_servers
    stand_ins = _stand_ins(targets[0].root)
    env = {"PATH": f"{stand_ins}:/usr/local/bin:/usr/bin:/bin"}
    reverse = (pipeline.CommandSpec(command=command, stage="after_rollback", run_once=True),)
    repo = git_repo_factory()
    deployed = []
    for number, text in enumerate(("A", "B"), 1):
        revision = repo.commit({"index.html": f"{text}\n"}, text)
        result = pipeline.deploy(
            deploy_spec(
                repo,
                tmp_path,
                servers,
                revision,
                deployment_id=number,
                commands=reverse,
                server_env=env,
            ),
            RecordingReporter(),
        )
        assert result.ok, [r.error for r in result.servers]
        servers = [after(result, server) for server in servers]
        deployed.append({r.server_id: r.release or "" for r in result.servers})
    assert [_ran(target) for target in targets] == ["", ""], "not in a deployment"

    back = pipeline.rollback(
        pipeline.RollbackSpec(
            deployment_id=3,
            project="Shop",
            servers=tuple(servers),
            targets=deployed[0],
            commands=reverse,
            server_env=env,
        ),
        RecordingReporter(),
    )

    assert all(r.ok for r in back), [r.error for r in back]
    left = [
        t.deploy_path / "releases" / deployed[1][s.id] / ".stand-ins-ran"
        for t, s in zip(targets, servers, strict=True)
    ]
    assert [p.read_text() if p.exists() else "" for p in left] == [
        "php artisan migrate:rollback --force\n",
        "",
    ]
