"""`make faults`: random faults at random moments of real deployments (docs/reliability.md).

    python -m faults [--faults 100] [--seed N] [--report var/faults-report.md]

Starts the scaled-out stack (faults/stack.py), three test hosts in network namespaces
(tests/support/netns.py) and a Git repository, then for each fault: commits a new revision,
asks the API to deploy it to the three hosts, injects the fault at a random moment of that
deployment, waits for the deployment to end (bounded by the reaper window), checks the
invariant on every host (faults/invariant.py), and deploys the next revision, which must
succeed. Prints a table of what survived and what was lost, stuck or divergent, and writes it
as markdown. Needs root (namespaces, tmpfs, tc); cleans everything up on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from faults.injectors import COMMAND_TIMEOUT, HANG_SECONDS, IN_THE_COMMIT, INJECTORS, Context
from faults.invariant import BUILD_SCRIPT, ExpectedTrees, Findings, LiveRelease, check_server
from faults.stack import (
    DEPLOYMENT_TIME_LIMIT,
    HEARTBEAT_TIMEOUT,
    REAPER_INTERVAL,
    ROOT,
    WORKER_CONCURRENCY,
    WORKER_QUEUES,
    WORKERS,
    Stack,
    StackError,
)
from tests.support.gitrepos import GitRepo
from tests.support.netns import NetnsHost, start_netns_host, unavailable_reason
from tests.support.processes import free_port
from tests.support.sshd import ensure_unprivileged_user, generate_key_pair

HOSTS = 3
#: After a fault ends, its deployment must end within this many seconds: the reaper's window
#: (a dead worker's deployment is failed within HEARTBEAT_TIMEOUT + REAPER_INTERVAL) and a
#: margin for what the deployment still had to do.
WINDOW = HEARTBEAT_TIMEOUT + REAPER_INTERVAL + 30
#: Bytes of new random data in each revision (a new chunk; the previous one is deleted).
CHUNK_BYTES = 24 * 1024
WARM_UP_DEPLOYMENTS = 3
ACTIVE = ("queued", "running")

BUILD_SH = """#!/bin/sh
set -e
mkdir -p dist
cat app/main.txt app/version.txt > dist/bundle.txt
"""
POST_SWITCH = 'echo "live: $(cat app/version.txt)"\n'
POST_SWITCH_HANGING = f'echo "about to hang"\nsleep {HANG_SECONDS}\n'


@dataclass
class Outcome:
    """One fault and what followed it."""

    number: int
    kind: str
    offset: float
    action: str = ""
    deployment: int | None = None
    status: str = ""
    error: str = ""
    findings: Findings = field(default_factory=Findings)
    next_failed: list[str] = field(default_factory=list)
    #: The API broke its contract (an error for a deployment it recorded, a 500).
    api: list[str] = field(default_factory=list)
    exits: list[str] = field(default_factory=list)

    @property
    def survived(self) -> bool:
        return self.findings.clean and not self.next_failed and not self.api


class Revisions:
    """Commits of the campaign's repository: each deployment deploys a revision of its own."""

    def __init__(self, repo: GitRepo, rng: random.Random) -> None:
        self.repo = repo
        self.rng = rng
        self.count = 0

    def commit(self, *, hang: bool = False) -> str:
        self.count += 1
        n = self.count
        files: dict[str, str | bytes | None] = {
            "app/main.txt": f"revision {n}\n" + "".join(f"line {i} of {n}\n" for i in range(50)),
            "app/version.txt": f"{n}\n",
            f"app/chunks/chunk-{n}.bin": self.rng.randbytes(CHUNK_BYTES),
            BUILD_SCRIPT: BUILD_SH,
            "post-switch.sh": POST_SWITCH_HANGING if hang else POST_SWITCH,
        }
        if n > 1:
            files[f"app/chunks/chunk-{n - 1}.bin"] = None
        return self.repo.commit(files, f"Revision {n}{' (hangs after the switch)' if hang else ''}")


class Campaign:
    def __init__(self, options: argparse.Namespace, base: Path) -> None:
        self.options = options
        self.base = base
        self.rng = random.Random(options.seed)
        self.stack = Stack(
            base=base,
            database=f"slipway_faults_{os.getpid()}",
            redis_port=free_port(),
            web_port=free_port(),
        )
        self.hosts: list[NetnsHost] = []
        self.outcomes: list[Outcome] = []
        self.typical = 5.0
        self.started = time.monotonic()

    # -- setting up

    def set_up(self, cleanup: contextlib.ExitStack) -> None:
        data_dir = Path(os.environ.get("SLIPWAY_DATA_DIR") or self.base / "data")
        data_dir.mkdir(parents=True, exist_ok=True)
        cleanup.callback(self.stack.stop)
        print(f"Starting the stack in {self.base} (logs in {self.base / 'logs'})", flush=True)
        self.stack.start(data_dir)
        os.environ.update(self.stack.env)
        os.environ["DJANGO_SETTINGS_MODULE"] = "deployer.settings"
        import django

        django.setup()
        # The campaign's own output is its lines; Django's settings make every library chatty.
        logging.getLogger().setLevel(logging.WARNING)
        from django.contrib.auth.models import User

        from builds.engine.ssh import confirm_host_key
        from deployer.celery import app
        from projects.models import BuildCommand, Command, CommandStage
        from projects.services import api_token_issue, project_create
        from servers.models import Server

        self.celery_app = app
        self.repo = GitRepo(self.base / "repository")
        self.revisions = Revisions(self.repo, self.rng)
        self.revisions.commit()
        self.expected = ExpectedTrees(self.repo.path, self.base)
        owner = User.objects.create_user("faults")
        self.project = project_create(
            owner=owner, name="Faults", repository_url=self.repo.url, branch="main"
        )
        BuildCommand.objects.create(project=self.project, command=f"sh {BUILD_SCRIPT}")
        Command.objects.create(
            project=self.project,
            command="sh post-switch.sh",
            stage=CommandStage.AFTER_SWITCH,
            timeout_seconds=COMMAND_TIMEOUT,
        )
        _, self.token = api_token_issue(user=owner, name="faults", scope="deploy")
        user = ensure_unprivileged_user()
        host_key = generate_key_pair(self.base / "keys", "host")
        for _ in range(HOSTS):
            host = start_netns_host(
                host_key=host_key,
                authorized_keys=[self.project.public_key],
                username=user,
                base=self.base,
            )
            cleanup.callback(host.close)
            self.hosts.append(host)
        self.servers = []
        for number, host in enumerate(self.hosts, 1):
            # Pinned as the product requires: the key the host offers, checked against the
            # fingerprint we made it with.
            confirm_host_key(host.address, 22, host.target.host_key_fingerprint)
            self.servers.append(
                Server.objects.create(
                    project=self.project,
                    name=f"host{number}",
                    hostname=host.address,
                    port=22,
                    username=user,
                    deploy_path=str(host.deploy_path),
                    host_key_fingerprint=host.target.host_key_fingerprint,
                )
            )
        print(
            f"Stack: PostgreSQL database {self.stack.database}, Redis on port "
            f"{self.stack.redis_port}, web on {self.stack.web_url}, {WORKERS} workers "
            f"(prefork, concurrency {WORKER_CONCURRENCY}, queues {','.join(WORKER_QUEUES)}), beat; "
            f"hosts {', '.join(h.address for h in self.hosts)}",
            flush=True,
        )

    def warm_up(self) -> None:
        durations = []
        for _ in range(WARM_UP_DEPLOYMENTS):
            revision = self.revisions.commit()
            started = time.monotonic()
            deployment, problem, _ = self.deploy(revision)
            if deployment is None:
                raise StackError(f"the warm-up deployment was refused: {problem}")
            status, error = self.wait_final(deployment, time.monotonic() + 120)
            if status != "succeeded":
                raise StackError(f"the warm-up deployment #{deployment} {status}: {error}")
            durations.append(time.monotonic() - started)
        self.typical = statistics.median(durations)
        print(
            f"A deployment takes {self.typical:.1f} s here: faults strike within that", flush=True
        )

    # -- the database, read through a connection a fault may have killed

    def db(self, read: Callable[[], Any]) -> Any:
        from django.db import Error, connection

        for attempt in range(5):
            try:
                return read()
            except Error:
                connection.close()
                if attempt == 4:
                    raise
                time.sleep(0.5)
        return None

    def deployment_state(self, deployment_id: int | None) -> tuple[str, str, str]:
        from builds.models import Deployment

        if deployment_id is None:
            return ("failed", "", "")
        row = self.db(
            lambda: (
                Deployment.objects.filter(pk=deployment_id)
                .values_list("status", "worker", "task_id")
                .first()
            )
        )
        return tuple(row) if row else ("vanished", "", "")

    # -- deploying through the API

    def deploy(self, revision: str) -> tuple[int | None, str, bool]:
        """Ask the API for a deployment of ``revision`` to every host: (its id or None, what
        went wrong, whether the API broke its contract). When the API fails, the database says
        whether the deployment was recorded anyway: answering an error for a recorded
        deployment (a user who retries gets two), or a 500 at all, breaks the contract; a 503
        that recorded nothing does not."""
        from builds.models import Deployment

        code = None
        try:
            response = httpx.post(
                f"{self.stack.web_url}/api/v1/projects/{self.project.slug}/deployments/",
                json={"servers": [s.pk for s in self.servers], "revision": revision},
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=30,
            )
            code = response.status_code
            if code in (201, 202):
                return int(response.json()["id"]), "", False
            problem = f"the API answered {code}: {_short(response.text, 160)!r}"
        except httpx.HTTPError as exc:
            problem = _short(f"the API did not answer: {exc!r}", 200)
        ids = self.db(
            lambda: list(Deployment.objects.filter(revision=revision).values_list("pk", flat=True))
        )
        if len(ids) > 1:
            problem += f"; yet {len(ids)} deployments were recorded"
        elif ids:
            problem += f"; yet deployment #{ids[0]} was recorded"
        broken = bool(ids) or code != 503
        return (ids[0] if ids else None), problem, broken

    def wait_final(self, deployment_id: int, deadline: float) -> tuple[str, str]:
        from builds.models import Deployment

        while True:
            row = self.db(
                lambda: (
                    Deployment.objects.filter(pk=deployment_id)
                    .values_list("status", "error")
                    .first()
                )
            )
            if row is None:
                return "vanished", ""
            if row[0] not in ACTIVE or time.monotonic() >= deadline:
                return row[0], row[1]
            time.sleep(0.3)

    # -- one fault

    def run_fault(self, number: int, kind: str) -> Outcome:
        hang = kind in IN_THE_COMMIT
        outcome = Outcome(number=number, kind=kind, offset=0.0)
        revision = self.revisions.commit(hang=hang)
        # Half the Redis outages begin before the request, so that the API meets them.
        early = kind == "Redis restarted" and self.rng.random() < 0.5
        if early:
            self.stack.hold_down("redis")
            outage = time.monotonic()
        created = time.monotonic()
        deployment, problem, broken = self.deploy(revision)
        outcome.deployment = deployment
        if problem:
            (outcome.api if broken else outcome.findings.notes).append(problem)
        if early:
            down = self.rng.uniform(1, 3)
            time.sleep(max(0.0, outage + down - time.monotonic()))
            self.stack.release("redis")
            outcome.offset = -down
            outcome.action = (
                f"Redis stopped before the request (no persistence: its queues are lost), "
                f"started {down:.1f} s later"
            )
        else:
            if not hang:
                outcome.offset = self.rng.uniform(0, self.typical)
                time.sleep(max(0.0, created + outcome.offset - time.monotonic()))
            context = Context(
                stack=self.stack,
                hosts=self.hosts,
                rng=self.rng,
                deployment_state=lambda: self.deployment_state(deployment),
                celery_app=self.celery_app,
            )
            outcome.action = INJECTORS[kind](context)
        if kind == "PostgreSQL connections killed":
            from django.db import connection

            connection.close()
        fault_over = time.monotonic()
        if deployment is not None:
            status, error = self.wait_final(deployment, fault_over + WINDOW)
            outcome.status, outcome.error = status, error
            if status == "vanished":
                outcome.findings.lost.append(f"deployment #{deployment} vanished")
            elif status == "queued":
                outcome.findings.lost.append(
                    f"deployment #{deployment} never started ({WINDOW} s after the fault)"
                )
            elif status == "running":
                outcome.findings.stuck.append(
                    f"deployment #{deployment} still running {WINDOW} s after the fault"
                )
        outcome.findings.extend(self.check(label="after the fault"))
        self.next_deployment(outcome)
        outcome.exits = [
            f"{e.name} exited unasked (code {e.returncode}); restarted"
            for e in self.stack.take_exits()
        ]
        return outcome

    def next_deployment(self, outcome: Outcome) -> None:
        revision = self.revisions.commit()
        deployment, problem, _ = self.deploy(revision)
        if deployment is None:
            outcome.next_failed.append(f"the next deployment was refused: {problem}")
        else:
            status, error = self.wait_final(
                deployment, time.monotonic() + 4 * self.typical + WINDOW
            )
            if status != "succeeded":
                outcome.next_failed.append(
                    f"the next deployment #{deployment} {status}: {_short(error)}"
                )
        after = self.check(label="after the next deployment")
        outcome.findings.extend(after)
        if outcome.next_failed or not after.clean:
            self.repair(outcome)

    def check(self, *, label: str) -> Findings:
        """The invariant on every host, and in the database."""
        from django.db.models import Count
        from django.utils import timezone

        from builds.models import Deployment
        from servers.models import Release

        found = Findings()
        now = timezone.now()
        for row in self.db(
            lambda: list(
                Deployment.objects.filter(status__in=ACTIVE).values_list(
                    "pk", "status", "created_at"
                )
            )
        ):
            if (now - row[2]).total_seconds() > WINDOW + 4 * self.typical:
                found.stuck.append(f"deployment #{row[0]} {row[1]} since {row[2]:%H:%M:%S}")
        twice = self.db(
            lambda: list(
                Release.objects.filter(deployment__isnull=False)
                .values("deployment", "server")
                .annotate(n=Count("id"))
                .filter(n__gt=1)
            )
        )
        for row in twice:
            found.lost.append(f"deployment #{row['deployment']} made {row['n']} releases")
        active = bool(found.stuck) or self.db(
            lambda: Deployment.objects.filter(status__in=ACTIVE).exists()
        )
        for server, host in zip(self.servers, self.hosts, strict=True):
            live = self.live_release(server.pk)
            owner = _lock_owner_number(host.deploy_path)
            owner_finished = None if owner is None else self.finished(owner)
            result = check_server(
                server_name=server.name,
                deploy_path=host.deploy_path,
                live=LiveRelease(*live) if live else None,
                expected=self.expected,
                lock_owner_finished=owner_finished,
            )
            if not active:
                for command in host.session_commands():
                    result.notes.append(
                        f"{server.name}: still running there: {_short(command, 80)}"
                    )
            if active:
                # A lock held by a deployment still running is its, not a leftover.
                result.stuck = [s for s in result.stuck if "lock left" not in s]
            found.extend(result)
        for name in ("lost", "stuck", "divergent", "notes"):
            setattr(found, name, [f"{label}: {line}" for line in getattr(found, name)])
        return found

    def live_release(self, server_id: int) -> tuple[str, str] | None:
        """(name, revision) of the server's live release in the database."""
        from servers.models import Release

        row = self.db(
            lambda: (
                Release.objects.filter(server_id=server_id, live=True)
                .values_list("name", "revision")
                .first()
            )
        )
        return (row[0], row[1]) if row else None

    def finished(self, deployment_id: int) -> bool:
        from builds.models import Deployment

        return bool(
            self.db(
                lambda: Deployment.objects.filter(
                    pk=deployment_id, status__in=("succeeded", "failed", "cancelled")
                ).exists()
            )
        )

    def repair(self, outcome: Outcome) -> None:
        """Bring the hosts back to a state the next fault can start from, as an operator
        would (recorded in the outcome): remove locks no active deployment holds, then
        deploy again."""
        from builds.models import Deployment

        if self.db(lambda: Deployment.objects.filter(status__in=ACTIVE).exists()):
            return
        for host in self.hosts:
            lock = host.deploy_path / ".slipway" / "lock"
            if lock.exists():
                shutil.rmtree(lock, ignore_errors=True)
                outcome.findings.notes.append(
                    f"repaired by hand: removed the lock on {host.address}"
                )
        deployment, problem, _ = self.deploy(self.revisions.commit())
        if deployment is not None:
            status, error = self.wait_final(
                deployment, time.monotonic() + 4 * self.typical + WINDOW
            )
            outcome.findings.notes.append(
                f"repair deployment #{deployment} {status} {_short(error)}".rstrip()
            )
        else:
            outcome.findings.notes.append(f"repair deployment refused: {problem}")

    # -- the whole run

    def run(self) -> None:
        kinds = list(INJECTORS)
        if self.options.kinds:
            kinds = [k for k in kinds if _slug(k) in self.options.kinds]
        plan = [kinds[i % len(kinds)] for i in range(self.options.faults)]
        self.rng.shuffle(plan)
        for number, kind in enumerate(plan, 1):
            outcome = self.run_fault(number, kind)
            self.outcomes.append(outcome)
            print(_line(outcome), flush=True)
            for detail in _details(outcome):
                print(f"      {detail}", flush=True)


def _lock_owner_number(deploy_path: Path) -> int | None:
    from faults.invariant import lock_owner

    owner = lock_owner(deploy_path)
    number = owner.removeprefix("deployment-")
    return int(number) if number.isdigit() else None


def _short(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _slug(kind: str) -> str:
    return kind.lower().replace(" ", "-")


def _line(outcome: Outcome) -> str:
    verdict = "survived" if outcome.survived else "NOT SURVIVED"
    return (
        f"#{outcome.number:3d} {outcome.kind:<30} at {outcome.offset:4.1f} s: "
        f"deployment #{outcome.deployment} {outcome.status or '-'}; {verdict}. {outcome.action}"
    )


def _details(outcome: Outcome) -> Iterator[str]:
    found = outcome.findings
    for label, lines in (
        ("lost", found.lost),
        ("stuck", found.stuck),
        ("divergent", found.divergent),
        ("next failed", outcome.next_failed),
        ("API", outcome.api),
        ("exit", outcome.exits),
        ("note", found.notes),
    ):
        for line in lines:
            yield f"{label}: {line}"
    if outcome.status == "failed" and outcome.error:
        yield f"its error: {_short(outcome.error)}"


COLUMNS = (
    "injected",
    "survived",
    "lost",
    "stuck",
    "divergent",
    "next failed",
    "API errors",
    "exits",
)


def table(outcomes: list[Outcome]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    totals = dict.fromkeys(COLUMNS, 0)
    for kind in INJECTORS:
        mine = [o for o in outcomes if o.kind == kind]
        if not mine:
            continue
        counts = {
            "injected": len(mine),
            "survived": sum(o.survived for o in mine),
            "lost": sum(bool(o.findings.lost) for o in mine),
            "stuck": sum(bool(o.findings.stuck) for o in mine),
            "divergent": sum(bool(o.findings.divergent) for o in mine),
            "next failed": sum(bool(o.next_failed) for o in mine),
            "API errors": sum(bool(o.api) for o in mine),
            "exits": sum(len(o.exits) for o in mine),
        }
        for column in COLUMNS:
            totals[column] += counts[column]
        rows.append((kind, *(str(counts[c]) for c in COLUMNS)))
    rows.append(("total", *(str(totals[c]) for c in COLUMNS)))
    return rows


def markdown(outcomes: list[Outcome], *, header: str) -> str:
    lines = [header, "", "| fault kind | " + " | ".join(COLUMNS) + " |"]
    lines.append("| --- |" + " ---: |" * len(COLUMNS))
    lines += ["| " + " | ".join(row) + " |" for row in table(outcomes)]
    lines += ["", "### What did not survive", ""]
    failed = [o for o in outcomes if not o.survived or o.exits]
    if not failed:
        lines.append("Nothing.")
    for outcome in failed:
        lines.append(f"- {_line(outcome)}")
        lines += [f"  - {detail}" for detail in _details(outcome)]
    return "\n".join(lines) + "\n"


def _print_table(outcomes: list[Outcome]) -> None:
    header = ("fault kind", *COLUMNS)
    rows = [header, *table(outcomes)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print(
            "  ".join(
                cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                for i, cell in enumerate(row)
            )
        )


def _commit() -> str:
    result = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return result.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m faults", description=__doc__.split("\n")[0])
    parser.add_argument("--faults", type=int, default=100, help="how many faults (default 100)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument(
        "--kinds",
        nargs="*",
        choices=[_slug(k) for k in INJECTORS],
        help="only these kinds of fault",
    )
    parser.add_argument(
        "--report",
        type=Path,
        default=ROOT / "var" / "faults-report.md",
        help="where the markdown table goes (default var/faults-report.md)",
    )
    options = parser.parse_args(argv)
    if options.seed is None:
        options.seed = random.SystemRandom().randrange(1_000_000)
    reason = unavailable_reason()
    if reason is not None:
        print(f"make faults: {reason}", file=sys.stderr)
        return 2
    # SIGTERM (a CI timeout, kill) unwinds like Ctrl-C, so everything is cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    commit = _commit()  # what is tested: the code as it was when the run began
    base = Path(tempfile.mkdtemp(prefix="slipway-faults-"))
    base.chmod(0o755)
    campaign = Campaign(options, base)
    print(
        f"make faults: {options.faults} faults, seed {options.seed}; heartbeat timeout "
        f"{HEARTBEAT_TIMEOUT} s, reaper every {REAPER_INTERVAL} s, window {WINDOW} s, "
        f"deployment time limit {DEPLOYMENT_TIME_LIMIT} s, command timeout {COMMAND_TIMEOUT} s",
        flush=True,
    )
    interrupted = False
    with contextlib.ExitStack() as cleanup:
        try:
            campaign.set_up(cleanup)
            campaign.warm_up()
            campaign.run()
        except KeyboardInterrupt:
            interrupted = True
            print("Interrupted: cleaning up", file=sys.stderr)
        except StackError as exc:
            print(f"make faults: {exc}", file=sys.stderr)
            return 1
        finally:
            # Keep the logs; the hosts, mounts, namespaces, processes and database go.
            logs = base / "logs"
            print(f"Logs: {logs}", file=sys.stderr)
    for entry in base.iterdir():
        if entry.name != "logs":
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink()
    if not campaign.outcomes:
        return 1
    minutes = (time.monotonic() - campaign.started) / 60
    print()
    _print_table(campaign.outcomes)
    header = (
        f"{len(campaign.outcomes)} faults on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"commit {commit}, seed {options.seed}, {minutes:.0f} minutes"
        + (" (interrupted)" if interrupted else "")
    )
    options.report.parent.mkdir(parents=True, exist_ok=True)
    options.report.write_text(markdown(campaign.outcomes, header=header))
    print(f"\n{header}\nThe table and the details: {options.report}")
    return 0 if all(o.survived for o in campaign.outcomes) and not interrupted else 1
