"""Output of any shape through a real deployment: a build command and an SSH command each print
a 1 MB line and 10 MB in many lines; the stored log keeps long lines up to the documented
limit with a marker, keeps every short line, and masks secrets in every printed form."""

from __future__ import annotations

import pytest

from builds import services
from builds.engine.lines import MAX_LINE_CHARS, cut_marker
from builds.models import LogLine, Status
from builds.runner import ERROR_CHARS
from builds.tasks import run_deployment
from projects.models import BuildCommand, Command, EnvironmentVariable

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "out-token-7Hq2x"
ESCAPED = r"esc-first-part\nesc-second-part\tesc-after-tab"
CONTROL = "ctl-first-part\tctl-second-part"
MANY_BYTES = 10_000_000
# Each printed line (with its newline) 100 bytes, so 10 MB is 100,000 lines.
_MANY_PREFIX = "many-lines "
MANY_LINE = _MANY_PREFIX + "$OUT_TOKEN " + "." * (99 - len(_MANY_PREFIX) - len(TOKEN) - 1)
LONG_LINE = (
    "head -c 65530 /dev/zero | tr '\\0' L; printf %s \"$OUT_TOKEN\"; "
    "head -c 1000000 /dev/zero | tr '\\0' M; echo"
)


def test_a_megabyte_line_and_ten_megabytes_of_lines_from_a_build_and_a_server(
    git_repo_factory, sshd_target, project_factory, server_factory, alice
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"})
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    for name, value in (("OUT_TOKEN", TOKEN), ("ESCAPED", ESCAPED), ("CONTROL", CONTROL)):
        EnvironmentVariable.objects.create(project=project, name=name, value=value, secret=True)
    many = f'yes "{MANY_LINE}" | head -c {MANY_BYTES}'
    for position, command in enumerate([LONG_LINE, many]):
        BuildCommand.objects.create(project=project, command=command, position=position)
    for position, command in enumerate(
        [
            LONG_LINE,
            many,
            # What a command makes of a secret's escapes, and its control characters escaped.
            'printf "%b\\n" "$ESCAPED"',
            "python3 -c 'import os; print(repr(os.environ[\"CONTROL\"]))'",
        ]
    ):
        Command.objects.create(
            project=project, command=command, stage="after_switch", position=position
        )

    deployment = services.deployment_create(project=project, servers=[server], user=alice)
    run_deployment.apply(args=(deployment.pk,))
    deployment.refresh_from_db()

    assert deployment.status == Status.SUCCEEDED, deployment.error
    lines = list(
        LogLine.objects.filter(deployment=deployment).order_by("seq").values_list("text", flat=True)
    )
    long_stored = "L" * 65530 + cut_marker(len(TOKEN) + 1_000_000)
    assert lines.count(long_stored) == 2, "cut before the secret that lies across the limit"
    marker_room = len(cut_marker(10**9))
    assert max(len(line) for line in lines) <= MAX_LINE_CHARS + marker_room
    expected_many = MANY_LINE.replace("$OUT_TOKEN", "********")
    assert lines.count(expected_many) == 2 * MANY_BYTES // 100, "every short line is kept"
    text = "\n".join(lines)
    for secret_piece in (
        TOKEN,
        "esc-first-part",
        "esc-second-part",
        "esc-after-tab",
        "ctl-first-part",
        "ctl-second-part",
    ):
        assert secret_piece not in text, secret_piece
    # printf %b made two lines of the secret, with a tab; repr() wrote the tab as \t.
    second = lines.index("********\t********")
    assert lines[second - 1] == "********"
    assert "'********'" in lines


def test_a_failed_command_whose_last_lines_are_long_gives_a_short_masked_error(
    git_repo_factory, sshd_target, project_factory, server_factory, alice
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"})
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    EnvironmentVariable.objects.create(project=project, name="OUT_TOKEN", value=TOKEN, secret=True)
    Command.objects.create(
        project=project,
        stage="after_switch",
        command=f"for i in 1 2 3 4 5; do {LONG_LINE}; done; exit 3",
    )

    deployment = services.deployment_create(project=project, servers=[server], user=alice)
    run_deployment.apply(args=(deployment.pk,))
    deployment.refresh_from_db()

    assert deployment.status == Status.FAILED
    assert "exit code 3" in deployment.error
    assert len(deployment.error) <= ERROR_CHARS
    assert TOKEN not in deployment.error
    target = deployment.targets.get()
    assert TOKEN not in target.reason and len(target.reason) <= 2000
