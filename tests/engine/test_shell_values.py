"""%variables% reach the remote shell as data, never as code (SSH commands and command checks)."""

from __future__ import annotations

import dataclasses

import pytest

from builds.engine import pipeline
from builds.engine.health import HealthCheckSpec
from builds.engine.variables import substitute_shell
from tests.support.engine import RecordingReporter, deploy_spec, server_for


def _hostile(marker_dir) -> dict[str, str]:
    """One value per way into a shell, each trying to create its own marker file."""
    return {
        "project": f"x; touch {marker_dir}/pwned-semicolon",
        "server": f"$(touch {marker_dir}/pwned-dollar)",
        "environment": f"`touch {marker_dir}/pwned-backtick`",
        "branch": f"main\ntouch {marker_dir}/pwned-newline",
        "deployer": f"a'b\"c'; touch {marker_dir}/pwned-quotes; '\"",
    }


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("cd %deploy_path% && ls", 'cd "$SLIPWAY_VAR_deploy_path" && ls'),
        ('echo "on %server%!"', 'echo "on ${SLIPWAY_VAR_server}!"'),
        ("echo '%server%'", "echo ''\"$SLIPWAY_VAR_server\"''"),
        (r"echo \"%server%", r'echo \""$SLIPWAY_VAR_server"'),
        ("echo %unknown% 100%", "echo %unknown% 100%"),
    ],
)
def test_it_writes_a_reference_that_fits_the_quoting_around_the_variable(command, expected):
    assert substitute_shell(command, {"deploy_path": "/srv", "server": "web"}) == expected


def test_it_runs_nothing_injected_through_variables_in_commands_and_checks(
    sshd_target, git_repo_factory, tmp_path
):
    marker_dir = sshd_target.deploy_path.parent
    values = _hostile(marker_dir)
    repo = git_repo_factory()
    revision = repo.commit({"index.html": "A\n"}, "A")
    server = dataclasses.replace(
        server_for(sshd_target), name=values["server"], environment=values["environment"]
    )
    writes = {
        "unquoted-project": "printf '%s' %project% > out-unquoted-project",
        "double-server": 'printf "%s" "%server%" > out-double-server',
        "single-environment": "printf '%s' '%environment%' > out-single-environment",
        "cd-branch": "cd %release_path% && printf '%s' %branch% > out-cd-branch",
        "double-deployer": 'printf "[%s]" "deployed by %deployer%" > out-double-deployer',
    }
    commands = tuple(
        pipeline.CommandSpec(command=command, stage="after_switch") for command in writes.values()
    )
    check = HealthCheckSpec(
        kind="command",
        when="before_switch",
        command="printf '%s' %project% > check-project && printf '%s' \"%server%\" > check-server",
        retries=1,
    )
    spec = dataclasses.replace(
        deploy_spec(repo, tmp_path, [server], revision, commands=commands, health_checks=(check,)),
        project=values["project"],
        branch=values["branch"],
        deployer=values["deployer"],
    )

    result = pipeline.deploy(spec, RecordingReporter())

    assert result.ok, [r.error for r in result.servers]
    assert sorted(p.name for p in marker_dir.iterdir() if p.name.startswith("pwned")) == []
    live = sshd_target.deploy_path / "current"
    assert (live / "out-unquoted-project").read_text() == values["project"]
    assert (live / "out-double-server").read_text() == values["server"]
    assert (live / "out-single-environment").read_text() == values["environment"]
    assert (live / "out-cd-branch").read_text() == values["branch"]
    assert (live / "out-double-deployer").read_text() == f"[deployed by {values['deployer']}]"
    assert (live / "check-project").read_text() == values["project"]
    assert (live / "check-server").read_text() == values["server"]
