"""Taking a built release to the servers: one ``ServerRun`` per server, moved through its
phases (connect, prepare, activate, finalize; revert when needed) by a strategy.

- parallel: every server at once (``max_parallel`` at a time);
- prepare_then_switch: every server receives and prepares the release; only when all are
  prepared is ``current`` switched on all of them; if one preparation fails, none is switched;
- rolling: batches; each batch is prepared, switched and checked before the next starts; a
  failed batch rolls back every server switched so far, and the rest are never touched;
- canary: the first servers get the release and are watched for a window, then the rest
  follow, at once or when someone promotes;
- blue_green: the servers of the idle colour get the release and their checks; only when all
  are healthy does the group's router send the traffic to them (builds.engine.router); the
  live colour is never touched, so switching back is one switch of the router.

Cancel and abort stop at the next safe point. An abort (``Aborted``) reverts nothing here:
the servers switched so far stay switched and are reported so (``ok``), the others are
cancelled, and the caller rolls the switched ones back as a rollback of its own (in Slipway,
a rollback deployment recorded when the aborted one ends).

A rollback takes a kept release back live the same way: one ``RollbackRun`` per server
(switch_back), through the same strategies and health checks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import shlex
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from builds.engine import direct, ftp, release, router, s3
from builds.engine.archive import SharedArchive
from builds.engine.build import BuildOutput, generated_rules, shared_seeds
from builds.engine.drift import refuse_drift
from builds.engine.errors import (
    Aborted,
    Cancelled,
    EngineError,
    InternalError,
    InvalidInput,
    LockHeld,
    ReleaseMissing,
    UserError,
)
from builds.engine.excludes import ExcludeRules
from builds.engine.health import (
    AFTER_SWITCH,
    BEFORE_SWITCH,
    HealthCheckFailed,
    HealthCheckSpec,
    run_check,
)
from builds.engine.manifest import (
    ChangeSet,
    DeferredManifests,
    Manifest,
    diff,
    is_generated,
    keep_generated,
    reuse_sources,
)
from builds.engine.specs import (
    BLUE_GREEN,
    CANARY,
    LEFT_RUNNING_SUFFIX,
    PARALLEL,
    PREPARE_THEN_SWITCH,
    RELEASE_COPY_AUTO,
    RELEASE_COPY_HARD_LINKS,
    ROLLING,
    STAGE_AFTER_ROLLBACK,
    STAGE_AFTER_SWITCH,
    STAGE_BEFORE_SWITCH,
    STAGE_BEFORE_TRANSFER,
    CommandSpec,
    DeploySpec,
    Reporter,
    RollbackSpec,
    ServerResult,
    ServerSpec,
    StrategySpec,
    lock_owner,
    other_colour,
    variables_for,
)
from builds.engine.ssh import Connection, JumpHosts, connect
from builds.engine.variables import shell_exports, substitute, substitute_shell

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- shared pieces


def run_commands(
    connection: Connection,
    commands: Sequence[CommandSpec],
    *,
    stage: str,
    server: ServerSpec,
    workdir: str,
    variables: Mapping[str, str],
    env: Mapping[str, str],
    reporter: Reporter,
    group_file: str = "",
    once: OnceSeat | None = None,
) -> None:
    """Run the stage's commands on one server in ``workdir``, output streamed to the log.
    Each command's process group is recorded in ``group_file`` when given (the lock's: see
    release.RemoteLayout.groups_file). A run-once command runs here only when ``once`` (this
    server's seat at the rollout's RunOnce) gives this server its turn; without a seat it runs.

    ``%variables%`` reach the shell as data (see variables.substitute_shell); the log shows
    the command with the values written in, for people to read."""
    # The %variables% last: a project variable called SLIPWAY_VAR_... cannot stand in for one.
    exports = "".join(
        f"export {name}={shlex.quote(value)}\n" for name, value in env.items() if _env_name_ok(name)
    ) + shell_exports(variables)
    for position, command in enumerate(commands):
        if command.stage != stage or not command.applies_to(server):
            continue
        reporter.check_cancelled()
        shown = substitute(command.command, variables)
        seat = once if command.run_once else None
        with _turn(seat, f"{stage}:{position}", command, shown, server, reporter) as here:
            if here:
                _run_command(
                    connection,
                    command,
                    exports=exports,
                    shown=shown,
                    server=server,
                    workdir=workdir,
                    variables=variables,
                    reporter=reporter,
                    group_file=group_file,
                )


@contextlib.contextmanager
def _turn(
    once: OnceSeat | None,
    key: str,
    command: CommandSpec,
    shown: str,
    server: ServerSpec,
    reporter: Reporter,
) -> Iterator[bool]:
    """Whether ``command`` runs here: always without a seat; for a run-once command, when this
    server gets it (the others skip it, or fail when it failed where it ran)."""
    if once is None:
        yield True
        return
    elsewhere = once.claim(key, command)
    label = command.description or _one_line(shown)
    if elsewhere is not None:
        if not elsewhere.ok:
            reporter.check_cancelled()  # it stopped because the deployment did
            raise UserError(
                f"The run-once command {label!r} failed on {elsewhere.server}; "
                f"{server.name} stops too"
            )
        reporter.log(
            "system", f"Skipped (run once: it ran on {elsewhere.server}): {label}", server.id
        )
        yield False
        return
    ok = False
    try:  # whatever happens, the servers waiting for this one learn it
        reporter.log(
            "system",
            f"Runs once, here on {server.name}: the other servers skip it: {label}",
            server.id,
        )
        yield True
        ok = True
    finally:
        once.finished(key, ok=ok)


def _run_command(
    connection: Connection,
    command: CommandSpec,
    *,
    exports: str,
    shown: str,
    server: ServerSpec,
    workdir: str,
    variables: Mapping[str, str],
    reporter: Reporter,
    group_file: str,
) -> None:
    text = substitute_shell(command.command, variables)
    reporter.log("system", f"$ {shown}", server.id)
    script = f"{exports}cd -- {shlex.quote(workdir)} || exit $?\n{text}\n"
    result = connection.run(
        "sh -c " + shlex.quote(script),
        on_line=lambda stream, line: reporter.log(stream, line, server.id),
        timeout=command.timeout_seconds,
        check=command.halt_on_error,
        check_cancelled=reporter.check_cancelled,
        group_file=group_file,
        display=shown,
    )
    if result.exit_code != 0:
        reporter.log(
            "system",
            f"Exited with {result.exit_code}; going on (halt on error is off)",
            server.id,
        )


def _one_line(text: str, limit: int = 80) -> str:
    """The first line of a command, cut to ``limit`` characters, for a log line about it."""
    lines = text.strip().splitlines() or [""]
    first = lines[0]
    if len(first) > limit or len(lines) > 1:
        return first[:limit].rstrip() + "…"
    return first


@dataclasses.dataclass
class _Turn:
    """Who runs one run-once command, and how it went."""

    index: int
    server: str
    done: bool = False
    ok: bool = False


class RunOnce:
    """Which server of a rollout runs each run-once command (``CommandSpec.run_once``): one,
    whatever the strategy runs at once; the others skip it. The servers of a rollout run in
    threads of one worker process, so one condition variable coordinates them.

    The rule (``ordered``, a deployment's or a rollback's own stages): the first server in the
    deployment's order that gets to the command runs it. A server that gets there while an
    earlier server the command applies to is still at work (or queued) in the same phase
    waits for it; a server that failed (unreachable, a failed step), that finished its phase
    without reaching the command, or that has not started (a later batch) does not count.
    The others wait until it has run, then skip it, or fail when it failed (halt on error).

    Unordered (switching servers back after a failed check or batch: which servers do so is
    not known beforehand): the first to get there runs it.
    """

    #: How often a waiting server looks for a cancel.
    POLL_SECONDS = 0.5

    def __init__(self, servers: Sequence[ServerSpec], reporter: Reporter) -> None:
        self._servers = tuple(servers)
        self._reporter = reporter
        self._changed = threading.Condition()
        self._turns: dict[str, _Turn] = {}
        #: Runs that a thread is working on, or that are queued for one (by index).
        self._busy: set[int] = set()

    def seat(self, index: int, *, ordered: bool, phase: str) -> OnceSeat:
        return OnceSeat(self, index, ordered=ordered, phase=phase)

    def busy(self, indexes: Sequence[int]) -> None:
        """These runs are queued for a thread (``_each``): earlier ones are waited for."""
        with self._changed:
            self._busy.update(indexes)
            self._changed.notify_all()

    def idle(self, index: int) -> None:
        with self._changed:
            self._busy.discard(index)
            self._changed.notify_all()

    def claim(self, key: str, command: CommandSpec, index: int, *, ordered: bool) -> _Turn | None:
        while True:
            with self._changed:
                turn = self._turns.get(key)
                if turn is None and not (ordered and self._earlier_at_work(command, index)):
                    self._turns[key] = _Turn(index, self._servers[index].name)
                    return None
                if turn is not None and turn.done:
                    return turn
                self._changed.wait(timeout=self.POLL_SECONDS)
            # Outside the lock: the reporter may ask the database.
            self._reporter.check_cancelled()

    def finished(self, key: str, *, ok: bool) -> None:
        with self._changed:
            turn = self._turns[key]
            turn.done, turn.ok = True, ok
            self._changed.notify_all()

    def _earlier_at_work(self, command: CommandSpec, index: int) -> bool:
        return any(
            other in self._busy and runs_commands(self._servers[other], command)
            for other in range(index)
        )


class OnceSeat:
    """One server's place at a rollout's RunOnce in one phase ("deploy" or "revert")."""

    def __init__(self, gate: RunOnce, index: int, *, ordered: bool, phase: str) -> None:
        self.gate = gate
        self.index = index
        self.ordered = ordered
        self.phase = phase

    def claim(self, key: str, command: CommandSpec) -> _Turn | None:
        """None: this server runs the command, then calls ``finished``. Else the turn of the
        server that ran it, once it has finished."""
        return self.gate.claim(f"{self.phase}:{key}", command, self.index, ordered=self.ordered)

    def finished(self, key: str, *, ok: bool) -> None:
        self.gate.finished(f"{self.phase}:{key}", ok=ok)


def runs_commands(server: ServerSpec, command: CommandSpec) -> bool:
    """Whether ``command`` runs on ``server`` when its stage comes (a shell, and it applies)."""
    return server.shell and not server.without_ssh and command.applies_to(server)


def _first(paths: Sequence[str], count: int = 5) -> str:
    """``a, b, c and 4 more``: the first ``count`` paths, for a log line."""
    more = f" and {len(paths) - count} more" if len(paths) > count else ""
    return ", ".join(paths[:count]) + more


def _env_name_ok(name: str) -> bool:
    return name.isidentifier() and name.isascii()


def has_commands(spec_commands: Sequence[CommandSpec], stage: str, server: ServerSpec) -> bool:
    return any(c.stage == stage and c.applies_to(server) for c in spec_commands)


def drifted_paths(prepared: release.Prepared, generated: ExcludeRules | None) -> list[str]:
    """The paths changed on the server since the live release was left by its deployment
    (by hand, or by the application), apart from the generated paths."""
    return [p for p in prepared.drifted if not is_generated(p, generated)]


def with_drift(
    changes: ChangeSet,
    prepared: release.Prepared,
    manifest: Manifest,
    generated: ExcludeRules | None = None,
) -> ChangeSet:
    """Turn the copy of the live release into exactly the build, leaving generated output.

    - Drift (changed since the live release's deployment finished, see ``drifted_paths``):
      the paths in the new build are sent again, the others removed (config files and
      shared links are written again anyway).
    - Rewritten (changed by the live release's own commands): the build's files among them
      are sent again, so the commands start from the build once more; the rest (bytecode,
      collected static files, caches) is the deployment's own output and stays.
    - Generated paths (``BuildSpec.generated_paths``) are never restored, removed or deleted.
    """
    changes = keep_generated(changes, generated)
    drifted = set(drifted_paths(prepared, generated))
    rewritten = {p for p in prepared.rewritten if not is_generated(p, generated)}
    if not drifted and not rewritten:
        return changes
    sending = set(changes.added) | set(changes.modified)
    resend = {
        p
        for p in drifted | rewritten
        if p in manifest and manifest[p].kind != "dir" and p not in sending
    }
    remove = {p for p in drifted if p not in manifest}
    return ChangeSet(
        added=changes.added,
        modified=sorted(set(changes.modified) | resend),
        deleted=sorted(set(changes.deleted) | remove),
        bytes_to_send=changes.bytes_to_send
        + sum(manifest[p].size for p in resend if manifest[p].kind == "file"),
        folders=changes.folders,
    )


class ArchiveCache:
    """Each distinct change set is archived once and streamed to every server needing it.

    ``seeds`` (see ``build.shared_seeds``) may travel too, to servers whose ``shared/``
    lacks them."""

    def __init__(self, output: BuildOutput, seeds: Manifest | None = None) -> None:
        self.output = output
        self.seeds = seeds or Manifest()
        self.manifest = (
            Manifest([*output.manifest.values(), *self.seeds.values()])
            if self.seeds
            else output.manifest
        )
        self._lock = threading.Lock()
        self._archives: dict[str, SharedArchive] = {}
        self._dir = tempfile.TemporaryDirectory(prefix="slipway-tar-")

    def archive_for(self, paths: Sequence[str], codec: str) -> SharedArchive:
        key = hashlib.sha256(os.fsencode("\0".join([codec, *paths]))).hexdigest()
        with self._lock:
            if key not in self._archives:
                self._archives[key] = SharedArchive(
                    self.output.root, paths, self.manifest, Path(self._dir.name), codec=codec
                )
            return self._archives[key]

    def close(self) -> None:
        with self._lock:
            archives = list(self._archives.values())
        for archive in archives:
            with contextlib.suppress(BaseException):
                archive.wait()
        self._dir.cleanup()


# --------------------------------------------------------------------------- one server


@dataclasses.dataclass(frozen=True)
class _Finishing:
    """What finishing a release writes besides the server's settings (RemoteLayout.finish)."""

    files: Mapping[str, release.FileToWrite]
    manifest_json: bytes = dataclasses.field(repr=False)


class _Run:
    """What every server's part in a rollout shares, whether it takes a new release
    (ServerRun) or goes back to a kept one (RollbackRun): the connection and lock, the
    commands and checks, and switching back to the release it had when a check fails.
    The strategies below move runs through ``connect``, ``prepare`` and ``activate``."""

    spec: DeploySpec | RollbackSpec
    release_path: str
    variables: dict[str, str]

    #: A switch back (``revert``) takes the server back from a release this run made live:
    #: a rollback, with the after-rollback commands. Not for a rollback's own run, whose
    #: switch back goes forward again.
    reverting_rolls_back = True

    def __init__(
        self, spec: DeploySpec | RollbackSpec, server: ServerSpec, reporter: Reporter, index: int
    ) -> None:
        self.spec = spec
        self.server = server
        self.reporter = reporter
        #: The server's place in the deployment's order (%groupindex% - 1).
        self.index = index
        #: Shared by the rollout's runs (``_with_strategy``): who runs each run-once command.
        self.once: RunOnce | None = None
        self.owner = lock_owner(spec.deployment_id)
        self.result = ServerResult(server_id=server.id, previous_release=server.live_release)
        self.connection: Connection | None = None
        #: The deployment's jump-host connections, shared by the servers behind one.
        self.jumps: JumpHosts | None = None
        self.layout: release.RemoteLayout | None = None
        #: The release live on the server when this run locked it: where a revert goes.
        self.previous: str | None = None
        self.atomic = server.atomic and server.shell
        self.locked = False
        #: The lock was left on the server for a command that may still be running.
        self.lock_left = False
        self.switched = False
        self.finished = False
        #: activate() follows prepare() at once (not after every server is prepared).
        self.activates_at_once = False

    # -- helpers

    def log(self, text: str) -> None:
        self.reporter.log("system", text, self.server.id)

    def seat(self, phase: str = "deploy") -> OnceSeat | None:
        """This run's seat for run-once commands: in its deployment's order, or (``revert``)
        first come."""
        if self.once is None:
            return None
        return self.once.seat(self.index, ordered=phase == "deploy", phase=phase)

    def _commands(self, stage: str, workdir: str, label: str) -> None:
        assert self.connection is not None
        if has_commands(self.spec.commands, stage, self.server):
            with self.reporter.step(label, self.server.id):
                run_commands(
                    self.connection,
                    self.spec.commands,
                    stage=stage,
                    server=self.server,
                    workdir=workdir,
                    variables=self.variables,
                    env=self.spec.server_env,
                    reporter=self.reporter,
                    group_file=self.layout.groups_file if self.layout is not None else "",
                    once=self.seat(),
                )

    def _release_path(self, name: str | None) -> str:
        if not name or self.layout is None:
            return ""
        return f"{self.layout.deploy_path}/releases/{name}"

    def checks(self, when: str) -> list[HealthCheckSpec]:
        return [
            c for c in self.spec.health_checks if c.when == when and c.applies_to(self.server.id)
        ]

    def run_checks(self, when: str, workdir: str) -> None:
        checks = self.checks(when)
        if not checks:
            return
        if any(c.kind == "command" for c in checks) and not self.server.shell:
            raise UserError(
                f"{self.server.name} has no shell: command health checks cannot run there"
            )
        with self.reporter.step(f"health checks {when.replace('_', ' ')}", self.server.id):
            for check in checks:
                run_check(
                    check,
                    variables=self.variables,
                    connection=self.connection,
                    workdir=workdir,
                    log=self.log,
                    check_cancelled=self.reporter.check_cancelled,
                )

    def _may_unlock(self) -> bool:
        """False while a command this run stopped may still be running on the server: the
        lock stays, so no deployment runs beside it. It is handed to an owner id that names
        no deployment, so that the next deployment does not take it over because this one
        has finished; only once it is stale (``lock_stale_after``)."""
        if self.connection is None or not self.connection.left_running:
            return True
        if self.lock_left:
            return False
        self.lock_left = True
        remaining = "; ".join(self.connection.left_running)
        if self.layout is not None:
            # The holder is one line of the lock's info file: no line breaks in it.
            holder = " ".join(
                f"Slipway deployment #{self.spec.deployment_id}: a stopped command may still "
                f"be running: {remaining}".split()
            )[:500]
            with contextlib.suppress(Exception):
                self.layout.lock(
                    holder=holder,
                    owner_id=self.owner + LEFT_RUNNING_SUFFIX,
                    stale_after=self.spec.lock_stale_after,
                    take_over_from=self.owner,
                    stop_groups=False,
                )
        self.log(
            "The deploy lock is kept: a stopped command may still be running on the server ("
            + remaining
            + f"). It is taken over once it is {self.spec.lock_stale_after} s old, or an "
            "admin breaks it on the server's page once that command is gone."
        )
        return False

    # -- phases

    def connect(self) -> None:
        self.reporter.check_cancelled()
        if self.server.without_ssh:
            return  # ftp.deliver and s3.deliver open their own connections
        if self.connection is not None:
            return  # connected while the build ran (ServerRun.adopt)
        pool = self.spec.connections
        with self.reporter.step("connect", self.server.id):
            # A server behind a jump host shares the deployment's jump connection (closed
            # after its last server), so its connection is never kept in the pool.
            self.connection = (
                pool.take(self.server.endpoint)
                if pool is not None and self.server.endpoint.jump is None
                else connect(self.server.endpoint, jumps=self.jumps)
            )
        if self.atomic:
            self.layout = release.RemoteLayout(self.connection, self.server.deploy_path)

    def prepare(self) -> None:
        raise NotImplementedError

    def activate(self) -> None:
        raise NotImplementedError

    def revert(self, reason: str) -> None:
        """Switch back to the release that was live before this run switched."""
        previous = self.previous
        if not self.atomic or not self.switched:
            self.abandon()
            return
        assert self.layout is not None and self.connection is not None
        if previous is None:
            self.log(f"Cannot roll back {self.server.name}: there was no release before this one")
            self.result.reason = reason
            return
        with self.reporter.step("roll back", self.server.id):
            # The lock may have been released after the switch: take it again (same owner).
            self.layout.lock(
                holder=f"Slipway rolling back #{self.spec.deployment_id}",
                owner_id=self.owner,
                stale_after=self.spec.lock_stale_after,
            )
            try:
                self.layout.switch(previous)
                self.log(f"Rolled back: current → releases/{previous} ({reason})")
                left = self.variables["release"]
                previous_variables = {
                    **self.variables,
                    "release_path": self._release_path(previous),
                    "release": previous,
                    "startrev": self.variables["endrev"],
                    # What the worker knows was live before (a rollback: the release it left).
                    "endrev": self.server.live_revision or "",
                    "previous_release_path": self._release_path(left),
                    "rollback": "1" if self.reverting_rolls_back else "0",
                }
                stages = [STAGE_AFTER_SWITCH]
                if self.reverting_rolls_back:
                    stages.insert(0, STAGE_AFTER_ROLLBACK)
                ran = False
                for stage in stages:
                    if has_commands(self.spec.commands, stage, self.server):
                        ran = True
                        run_commands(
                            self.connection,
                            self.spec.commands,
                            stage=stage,
                            server=self.server,
                            workdir=previous_variables["release_path"],
                            variables=previous_variables,
                            env=self.spec.server_env,
                            reporter=self.reporter,
                            group_file=self.layout.groups_file,
                            once=self.seat("revert"),
                        )
                if ran:
                    self._settle(previous)
            finally:
                if self._may_unlock():
                    with contextlib.suppress(Exception):
                        self.layout.unlock(owner_id=self.owner)
        self.locked = False
        self.finished = True
        self.switched = False
        self.result.rolled_back = True
        self.result.ok = False
        self.result.release = previous
        self.result.reason = reason
        self.reporter.target_state(self.server.id, "rolled_back", reason)

    def _settle(self, name: str) -> None:
        """Record the release as the after-switch commands left it, so that what they wrote
        is not taken for drift by the next deployment. A failure only costs that report."""
        if self.atomic and self.layout is not None:
            try:
                self.layout.settle(name)
            except EngineError as error:
                self.log(f"Could not record releases/{name} after its commands: {error}")

    def abandon(self) -> None:
        """Release the lock if this run still holds it (and no stopped command may still be
        running under it)."""
        if self.atomic and self.locked and self.layout is not None and self._may_unlock():
            with contextlib.suppress(Exception):
                self.layout.unlock(owner_id=self.owner)
            self.locked = False

    def close(self) -> None:
        if self.connection is not None:
            pool = self.spec.connections
            with contextlib.suppress(Exception):
                if pool is not None and self.server.endpoint.jump is None:
                    pool.give_back(self.connection)
                else:
                    self.connection.close()
            self.connection = None

    def fail(self, error: BaseException) -> None:
        """Record a failure of this server (any phase) and leave its server as it was."""
        if isinstance(error, Cancelled):
            self.result.cancelled = True
            self.result.error = error
            self.log("Cancelled; the live release was left as it was")
        elif isinstance(error, EngineError):
            self.result.error = error
            if not self.result.rolled_back:
                self.log(f"Failed: {error}")
        else:  # ours: keep the detail for the operator, not the page
            self.result.error = InternalError(
                f"Unexpected error on {self.server.name}: {type(error).__name__}"
            )
            self.log(f"Failed: {self.result.error}")
            logger.error("Deploying to %s failed", self.server.name, exc_info=error)
        if not self.result.rolled_back:
            self.abandon()
        # A failure after the switch leaves the new release live (as Capistrano and Deployer
        # do; only a failed check switches back): say so, for the database to agree.
        self.result.switched = bool(self.switched and self.result.release)


class ServerRun(_Run):
    """One server's part in a deployment. Phases run in order; each may raise EngineError."""

    spec: DeploySpec

    def __init__(
        self,
        spec: DeploySpec,
        server: ServerSpec,
        output: BuildOutput,
        name: str,
        archives: ArchiveCache,
        reporter: Reporter,
        index: int,
    ) -> None:
        super().__init__(spec, server, reporter, index)
        self.output = output
        self.name = name
        self.archives = archives
        self.prepared: release.Prepared | None = None
        #: The lock and new release EarlyPreparation made while the build ran (see adopt).
        self.early_prepared: release.Prepared | None = None
        #: What finishing the release writes, when activate() finishes and switches in one
        #: trip.
        self.pending_finish: _Finishing | None = None
        deploy_path = release.validate_deploy_path(server.deploy_path)
        self.release_path = f"{deploy_path}/releases/{name}" if self.atomic else deploy_path
        self.variables = variables_for(
            server=server,
            release_path=self.release_path,
            name=name,
            revision=output.revision,
            project=spec.project,
            branch=spec.branch,
            deployer=spec.deployer,
            index=index,
        )

    # -- phases

    def prepare(self) -> None:
        """Everything up to the switch: the release is complete and checked, not live."""
        if not self.atomic:
            return  # in place: nothing can be prepared aside
        assert self.layout is not None
        layout, server, output = self.layout, self.server, self.output
        with self.reporter.step("transfer", server.id):
            prepared = self._lock_and_prepare()
            self.prepared = prepared
            self.previous = prepared.live
            self.result.previous_release = prepared.live
            self.variables["previous_release_path"] = self._release_path(prepared.live)
            if self.spec.config_only:
                if not prepared.copied or server.live_manifest is None:
                    raise UserError(
                        f"{server.name}: a config-only deployment needs a live release made by Slipway"
                    )
                manifest = server.live_manifest
                changes = ChangeSet()
            else:
                manifest = output.manifest
                base = server.live_manifest if prepared.copied else None
                generated = generated_rules(self.spec.build)
                changes = with_drift(diff(base, manifest), prepared, manifest, generated)
                drifted = drifted_paths(prepared, generated)
                refuse_drift(
                    self.spec.on_drift, drifted, server=server.name, where="the live release"
                )
                if drifted:
                    self.log(
                        f"{len(drifted)} paths were changed on the server since the last "
                        "deployment finished (by hand, or by the application); they are "
                        f"restored in the new release: {_first(drifted)}"
                    )
            removals = changes.deleted + [p for p in changes.modified if manifest[p].kind != "dir"]
            if prepared.linked:
                # A path new to the build may already be in the copy (made on the server
                # since): a hard link to the live release's file, removed so that the
                # upload writes a new one (GNU tar would unlink it; other tars write into it).
                there = set(prepared.drifted) | set(prepared.rewritten)
                removals += [p for p in changes.added if p in there and manifest[p].kind != "dir"]
            changes, removals = self._reuse(changes, manifest, removals)
            self.result.changes = changes
            self.log(changes.summary() + ("" if prepared.copied else " (full upload)"))
        # Before-transfer commands see the live release; the new one only exists unfinished.
        self._commands(
            STAGE_BEFORE_TRANSFER,
            layout.current_path if prepared.live else layout.deploy_path,
            "commands before transfer",
        )
        seeds = self._seeds(prepared) if not self.spec.config_only else []
        with self.reporter.step("upload", server.id):
            self._upload(changes, manifest, removals, seeds)
        self.result.manifest = manifest
        self._commands(STAGE_BEFORE_SWITCH, self.release_path, "commands before switch")
        self.run_checks(BEFORE_SWITCH, self.release_path)

    def adopt(self, early: EarlyPreparation) -> None:
        """Take over what ``EarlyPreparation`` did for this server while the build ran: its
        connection, and the lock and new release when that worked (else ``prepare`` does it
        again, on the same connection)."""
        self.connection = early.connection
        if self.atomic and self.connection is not None:
            self.layout = release.RemoteLayout(self.connection, self.server.deploy_path)
        self.locked = early.maybe_locked
        self.early_prepared = early.prepared

    def _lock_and_prepare(self) -> release.Prepared:
        """Lock and start the release in one trip; take over a lock whose owner has finished."""
        assert self.layout is not None
        if self.early_prepared is not None:
            prepared, self.early_prepared = self.early_prepared, None
        else:
            try:
                prepared = lock_and_prepare(self.layout, self.spec, self.server, self.name)
            except LockHeld:
                raise
            except BaseException:
                # Preparing may fail after the lock was taken (a full disk while copying the
                # live release): abandon() then releases it, if it is this run's.
                self.locked = True
                raise
        self.locked = True
        for note in prepared.notes:
            self.log(note[:1].upper() + note[1:])
        return prepared

    def _seeds(self, prepared: release.Prepared) -> list[str]:
        """The paths of the build that fill the shared paths ``shared/`` lacks (logged)."""
        seeds = self.archives.seeds
        chosen: list[str] = []
        for raw in prepared.unseeded:
            path = release.validate_relative_path(raw, "shared_paths")
            under = [p for p in seeds if p == path or p.startswith(path + "/")]
            if under:
                size = sum(seeds[p].size for p in under if seeds[p].kind == "file")
                self.log(f"Seeding shared/{path} from the build: {len(under)} paths, {size} bytes")
            chosen += under
        return chosen

    def _reuse(
        self, changes: ChangeSet, manifest: Manifest, removals: list[str]
    ) -> tuple[ChangeSet, list[str]]:
        """Copy on the server, from the releases kept there, each file to send whose content
        one of them holds (``removals`` go first, in the same trip). Answers the change set
        with those files counted as reused, not sent, and what the upload must still
        remove. A full deployment sends everything."""
        assert self.layout is not None and self.prepared is not None
        kept = _kept_with_live(self.server, self.name)
        if self.spec.full or self.spec.config_only or not kept:
            return changes, removals
        sources = reuse_sources(changes.paths_to_send, manifest, kept, skip=self.spec.shared_paths)
        if not sources:
            return changes, removals
        unusable = set(self.layout.reuse(self.name, sources, manifest, remove=removals))
        reused = tuple(sorted(p for p in sources if p not in unusable))
        bytes_reused = sum(manifest[p].size for p in reused)
        if unusable:
            self.log(
                f"{len(unusable)} files kept on the server were changed or gone since Slipway "
                f"wrote them; they are sent: {_first(sorted(unusable))}"
            )
        replaced = dataclasses.replace(
            changes,
            bytes_to_send=changes.bytes_to_send - bytes_reused,
            reused=reused,
            bytes_reused=bytes_reused,
        )
        # The copies that could not be trusted are removed, then sent.
        return replaced, sorted(unusable)

    def _upload(
        self,
        changes: ChangeSet,
        manifest: Manifest,
        removals: Sequence[str],
        seeds: Sequence[str] = (),
    ) -> None:
        assert self.layout is not None and self.prepared is not None
        server, reporter = self.server, self.reporter
        reused = set(changes.reused)
        paths_to_send = [p for p in changes.paths_to_send if p not in reused]
        # Seeds land in the release at their own paths; finishing moves them into shared/.
        to_send = sorted(set(paths_to_send) | set(seeds))
        # Files as the archive counts them (folders and links carry no content).
        extra_seeds = [p for p in seeds if p not in changes.paths_to_send]
        files_total = sum(1 for p in paths_to_send if manifest[p].kind == "file") + sum(
            1 for p in extra_seeds if self.archives.seeds[p].kind == "file"
        )
        bytes_total = changes.bytes_to_send + sum(
            self.archives.seeds[p].size
            for p in extra_seeds
            if self.archives.seeds[p].kind == "file"
        )
        reporter.progress(server.id, 0, files_total, 0, bytes_total)
        if to_send:
            archive = self.archives.archive_for(to_send, self.prepared.codec)
            sent = [0]

            def counted() -> Iterator[bytes]:
                for chunk in archive.chunks():
                    # Cancel stops the upload too: raising here kills tar on the server.
                    reporter.check_cancelled()
                    sent[0] += len(chunk)
                    files_done, bytes_done = archive.carried(sent[0])
                    reporter.progress(server.id, files_done, files_total, bytes_done, bytes_total)
                    yield chunk

            self.layout.upload(self.name, counted(), remove=removals, codec=archive.codec)
        elif removals:
            self.layout.upload(self.name, None, remove=removals)
        reporter.progress(server.id, files_total, files_total, bytes_total, bytes_total)
        reporter.check_cancelled()
        files = {
            release.validate_relative_path(config.path, "config_files"): release.FileToWrite(
                body=substitute(config.body, self.variables).encode(),
                mode=config.file_mode,
                group=config.group,
            )
            for config in self.spec.config_files
            if not config.server_ids or server.id in config.server_ids
        }
        finishing = _Finishing(files=files, manifest_json=manifest.to_json())
        if self._switches_when_finished():
            # Finished and switched in one trip by activate(), next.
            self.pending_finish = finishing
            return
        self._finish(finishing)

    def _finish(
        self,
        finishing: _Finishing,
        *,
        then_switch: bool = False,
        keep: int | None = None,
        protect: Sequence[str] = (),
        unlock_owner: str = "",
    ) -> release.Cleaned:
        assert self.layout is not None
        return self.layout.finish(
            self.name,
            files=finishing.files,
            manifest_json=finishing.manifest_json,
            shared_paths=self.spec.shared_paths,
            file_mode=self.server.file_mode,
            directory_mode=self.server.directory_mode,
            then_switch=then_switch,
            keep=keep,
            protect=protect,
            unlock_owner=unlock_owner,
        )

    def _switches_when_finished(self) -> bool:
        """Nothing runs in the release between finishing it and switching to it (no
        before-switch commands or checks, and this server goes live as soon as it is
        prepared): the two are one trip."""
        return (
            self.activates_at_once
            and not has_commands(self.spec.commands, STAGE_BEFORE_SWITCH, self.server)
            and not self.checks(BEFORE_SWITCH)
        )

    def activate(self) -> None:
        """Switch, run the after-switch commands and checks. A failed check switches back."""
        if self.server.without_ssh:
            (s3.deliver if self.server.s3 is not None else ftp.deliver)(
                self.spec,
                self.server,
                self.output,
                self.reporter,
                self.result,
                rollback_to=self.spec.rollback_to.get(self.server.id, ""),
            )
            self.switched = True
            self.run_checks(AFTER_SWITCH, self.release_path)
            return
        if not self.atomic:
            assert self.connection is not None
            direct.deliver(
                self.spec,
                self.server,
                self.output,
                self.reporter,
                self.connection,
                self.result,
                once=self.seat(),
            )
            self.switched = True
            self.run_checks(AFTER_SWITCH, self.release_path)
            return
        assert self.layout is not None and self.prepared is not None
        self.reporter.check_cancelled()  # the last safe point: after the switch, the release is live
        layout, server = self.layout, self.server
        protect = [self.prepared.live] if self.prepared.live else []
        after = has_commands(self.spec.commands, STAGE_AFTER_SWITCH, server) or bool(
            self.checks(AFTER_SWITCH)
        )
        # What ran in the release since finish() recorded it, to be recorded again.
        ran_before = has_commands(self.spec.commands, STAGE_BEFORE_SWITCH, server) or bool(
            self.checks(BEFORE_SWITCH)
        )
        with self.reporter.step("switch", server.id):
            # Without after-switch work, switching, cleaning up and unlocking is one trip;
            # finishing the release too when nothing ran since the upload (pending_finish).
            try:
                if self.pending_finish is not None:
                    finishing, self.pending_finish = self.pending_finish, None
                    cleaned = self._finish(
                        finishing,
                        then_switch=True,
                        keep=None if after else server.keep_releases,
                        protect=protect,
                        unlock_owner="" if after else self.owner,
                    )
                else:
                    cleaned = layout.switch_and_clean_up(
                        self.name,
                        keep=None if after else server.keep_releases,
                        protect=protect,
                        unlock_owner="" if after else self.owner,
                        settle=ran_before,
                    )
            except EngineError:
                # The trip may have failed after its rename (the clean-up, the connection):
                # if `current` is the new release, it went live and must be recorded so.
                self._note_switch_if_live()
                raise
            self.switched = True
            self.result.release = self.name
            self.log(f"current → releases/{self.name}")
        if not after:
            self._finished(cleaned.removed)
            return
        self._commands(STAGE_AFTER_SWITCH, self.release_path, "commands after switch")
        try:
            self.run_checks(AFTER_SWITCH, self.release_path)
        except HealthCheckFailed as failed:
            self.revert(str(failed))
            raise
        self.finalize()

    def _note_switch_if_live(self) -> None:
        """After a failed switch trip: read `current` back (read-only) and mark this run
        switched when it points at the new release. Unreadable (the connection is gone): left
        as not switched; the next deployment's lock step and the reaper's reconciliation
        see the server as it is."""
        assert self.layout is not None
        try:
            live = self.layout.inspect().current
        except Exception:  # the server is unreachable now: nothing more can be told
            return
        if live == self.name:
            self.switched = True
            self.result.release = self.name
            self.log(f"current → releases/{self.name} (the switch happened before the failure)")

    def finalize(self) -> None:
        """Clean up old releases and release the lock."""
        if not self.atomic or self.finished or self.layout is None:
            return
        protect = [
            self.name,
            *([self.prepared.live] if self.prepared and self.prepared.live else []),
        ]
        with self.reporter.step("clean up", self.server.id):
            # The after-switch commands have run: record the release as they left it.
            cleaned = self.layout.clean_up(
                keep=self.server.keep_releases,
                protect=protect,
                unlock_owner=self.owner,
                settle=self.name if self.switched else "",
            )
        self._finished(cleaned.removed)

    def _finished(self, removed: list[str]) -> None:
        self.finished = True
        self.locked = False
        self.result.removed_releases = removed
        if removed:
            self.log(f"Removed old releases: {', '.join(removed)}")

    def abandon(self) -> None:
        """Drop a release that never went live, and release the lock."""
        if self.atomic and self.locked and not self._may_unlock():
            return
        if self.atomic and self.locked and not self.switched and self.layout is not None:
            with contextlib.suppress(Exception):
                self.layout.discard(self.name, unlock_owner=self.owner)
            self.locked = False
        else:
            super().abandon()


class RollbackRun(_Run):
    """One server's part in a rollback: lock, check that the kept release is complete, run
    the before-switch checks against it, switch, then the after-switch commands and checks
    (a failed check switches back to the release the server had). No file is sent and no
    release is removed."""

    spec: RollbackSpec
    reverting_rolls_back = False

    def __init__(
        self, spec: RollbackSpec, server: ServerSpec, reporter: Reporter, index: int
    ) -> None:
        super().__init__(spec, server, reporter, index)
        self.target = spec.targets.get(server.id, "")
        deploy_path = release.validate_deploy_path(server.deploy_path)
        self.release_path = f"{deploy_path}/releases/{self.target}"
        self.variables = variables_for(
            server=server,
            release_path=self.release_path,
            name=self.target,
            revision=spec.revisions.get(server.id, ""),
            project=spec.project,
            branch=spec.branch,
            deployer=spec.deployer,
            index=index,
            rollback=True,
        )

    def connect(self) -> None:
        if not self.target or not release.is_release_name(self.target):
            raise InvalidInput("release", f"{self.server.name}: no release to roll back to")
        if self.server.without_ssh:
            kind = "an S3 bucket" if self.server.s3 is not None else "an FTP server"
            raise UserError(
                f"{self.server.name} is {kind}: it has no releases to switch between; "
                "its rollback is a deployment of the earlier release's revision"
            )
        if not self.atomic:
            raise UserError(
                f"{self.server.name} is not an atomic server: there are no releases to switch between"
            )
        super().connect()

    def prepare(self) -> None:
        assert self.layout is not None
        layout, spec = self.layout, self.spec
        with self.reporter.step("lock", self.server.id):
            holder = f"Slipway rollback #{spec.deployment_id} by {spec.deployer or 'unknown'}"

            def attempt(take_over_from: str = "") -> tuple[tuple[str, ...], str | None]:
                try:
                    return layout.lock_for_rollback(
                        self.target,
                        holder=holder,
                        owner_id=self.owner,
                        stale_after=spec.lock_stale_after,
                        take_over_from=take_over_from,
                    )
                except ReleaseMissing:
                    self.locked = True  # taken before the release was found missing
                    raise

            try:
                notes, live = attempt()
            except LockHeld as held:
                if not held.owner or not spec.lock_owner_finished(held.owner):
                    raise
                notes, live = attempt(take_over_from=held.owner)
            self.locked = True
            for note in notes:
                self.log(note[:1].upper() + note[1:])
            self.previous = live
            self.result.previous_release = self.previous
            self.variables["previous_release_path"] = self._release_path(live)
        self.run_checks(BEFORE_SWITCH, self.release_path)

    def activate(self) -> None:
        assert self.layout is not None
        self.reporter.check_cancelled()  # the last safe point: after the switch, it is live
        after = (
            has_commands(self.spec.commands, STAGE_AFTER_SWITCH, self.server)
            or has_commands(self.spec.commands, STAGE_AFTER_ROLLBACK, self.server)
            or bool(self.checks(AFTER_SWITCH))
        )
        with self.reporter.step("switch", self.server.id):
            if after:
                self.layout.switch(self.target)
            else:
                # Nothing to run after the switch: switching and unlocking is one trip, and
                # the release is left recorded as its own deployment left it. Not unlocking
                # while a stopped check's command may still run (abandon() decides).
                unlock = self.connection is None or not self.connection.left_running
                try:
                    self.layout.switch_and_clean_up(
                        self.target, unlock_owner=self.owner if unlock else "", settle=False
                    )
                except EngineError:
                    self._note_switch_if_live()
                    raise
                self.locked = not unlock
            self.switched = True
            self.result.release = self.target
            self.log(f"current → releases/{self.target}")
        if not after:
            self.finished = True
            self.abandon()
            return
        self._commands(STAGE_AFTER_ROLLBACK, self.release_path, "commands after rollback")
        self._commands(STAGE_AFTER_SWITCH, self.release_path, "commands after switch")
        try:
            self.run_checks(AFTER_SWITCH, self.release_path)
        except HealthCheckFailed as failed:
            self.revert(str(failed))
            raise
        self._settle(self.target)
        self.finished = True
        self.abandon()

    def _note_switch_if_live(self) -> None:
        """After a failed switch trip: mark this run switched when `current` points at the
        kept release after all (read-only; unreadable leaves it as not switched)."""
        assert self.layout is not None
        try:
            live = self.layout.inspect().current
        except Exception:  # the server is unreachable now: nothing more can be told
            return
        if live == self.target:
            self.switched = True
            self.result.release = self.target
            self.log(f"current → releases/{self.target} (the switch happened before the failure)")


# --------------------------------------------------------------------------- strategies


def _each(
    runs: Sequence[_Run], work: Callable[[_Run], None], *, limit: int, reporter: Reporter
) -> None:
    """Run ``work`` for each run in threads (at most ``limit`` at once); failures are recorded
    on the run, never raised."""

    def guarded(run: _Run) -> None:
        try:
            work(run)
        except BaseException as error:
            run.fail(error)
        finally:
            if run.once is not None:
                run.once.idle(run.index)
            reporter.thread_finished()

    if not runs:
        return
    # Queued runs count as at work for run-once commands: a later server waits for them.
    for run in runs:
        if run.once is not None:
            run.once.busy([run.index])
    with ThreadPoolExecutor(max_workers=max(1, min(limit, len(runs)))) as pool:
        list(pool.map(guarded, runs))


def _failed(run: _Run) -> bool:
    return run.result.error is not None or run.result.rolled_back or run.result.cancelled


def _full(run: _Run) -> None:
    run.activates_at_once = True
    run.connect()
    run.prepare()
    run.activate()
    run.result.ok = True


def _connect_and_prepare(run: _Run) -> None:
    run.connect()
    run.prepare()


def _activate(run: _Run) -> None:
    run.activate()
    run.result.ok = True


def _mark_untouched(runs: Sequence[_Run], reason: str, *, cancelled: bool = False) -> None:
    for run in runs:
        if cancelled:
            run.result.cancelled = True
        else:
            run.result.skipped = True
        run.result.reason = reason
        run.reporter.target_state(run.server.id, "cancelled" if cancelled else "skipped", reason)


def _revert_switched(runs: Sequence[_Run], reason: str, reporter: Reporter, limit: int) -> None:
    switched = [run for run in runs if run.switched and not run.result.rolled_back]
    _each(switched, lambda run: run.revert(reason), limit=limit, reporter=reporter)


def _aborted_only(runs: Sequence[_Run]) -> bool:
    """Some of ``runs`` stopped on an abort and none failed for another reason: nothing is
    reverted here (the caller rolls back what was switched)."""
    aborted = any(isinstance(run.result.error, Aborted) for run in runs)
    return aborted and not _failure_reason(runs)


def _stop(runs: Sequence[_Run], stopped: Cancelled, reporter: Reporter) -> None:
    """A cancel or an abort noticed between servers (before a batch, in the pause between
    batches, in a canary's window or its wait for promotion): what was switched stays
    switched and is reported so; the servers not reached yet are left as they were."""
    word = "Aborted" if isinstance(stopped, Aborted) else "Cancelled"
    untouched = [
        run for run in runs if not run.result.ok and not _failed(run) and not run.result.skipped
    ]
    switched = [run.server.name for run in runs if run.result.ok]
    _mark_untouched(untouched, f"{word} before this server's turn", cancelled=True)
    if untouched:
        reporter.log(
            "system",
            f"{word}: {', '.join(run.server.name for run in untouched)} left as "
            f"{'it was' if len(untouched) == 1 else 'they were'}"
            + (f"; switched already: {', '.join(switched)}" if switched else ""),
        )


def _failure_reason(runs: Sequence[_Run]) -> str:
    failed = [run for run in runs if _failed(run) and not run.result.cancelled]
    if not failed:
        return ""
    first = failed[0]
    detail = first.result.reason or str(first.result.error or "failed")
    return f"{first.server.name} failed: {detail}"


def _kept_with_live(server: ServerSpec, new_release: str) -> DeferredManifests:
    """The releases a file may be copied from on ``server``: those it keeps, then the one the
    worker knows as live (with the manifest it knows for it, whatever is live now), never
    ``new_release`` itself. The kept ones are read when asked for (``DeferredManifests``)."""
    kept = server.kept_manifests
    live, live_manifest = server.live_release, server.live_manifest
    with_live = bool(live) and live_manifest is not None
    names = list(kept)
    if with_live and live and live not in names:
        names.append(live)

    def load(name: str) -> Manifest | None:
        if with_live and name == live:
            return live_manifest
        return kept.get(name)

    return DeferredManifests([name for name in names if name != new_release], load)


def hard_links(spec: DeploySpec, server: ServerSpec) -> bool:
    """Whether the server's new release is made of hard links to the live one's files (see
    ``specs.RELEASE_COPIES``): "auto" links unless a command of this deployment runs on
    this server (at any stage: a before-transfer command runs in the live release)."""
    choice = server.release_copy
    if choice == RELEASE_COPY_AUTO:
        return not any(command.applies_to(server) for command in spec.commands)
    return choice == RELEASE_COPY_HARD_LINKS


def lock_and_prepare(
    layout: release.RemoteLayout, spec: DeploySpec, server: ServerSpec, name: str
) -> release.Prepared:
    """Take ``server``'s lock and start release ``name`` (RemoteLayout.lock_and_prepare),
    taking over a lock whose owner has finished. Raises LockHeld (the lock is not this
    deployment's) or what the trip raised (the lock may then be held)."""
    owner = lock_owner(spec.deployment_id)

    def attempt(take_over_from: str = "") -> release.Prepared:
        return layout.lock_and_prepare(
            name,
            holder=f"Slipway deployment #{spec.deployment_id} by {spec.deployer or 'unknown'}",
            owner_id=owner,
            stale_after=spec.lock_stale_after,
            take_over_from=take_over_from,
            expected_live=server.live_release,
            incremental=not spec.full and server.live_manifest is not None,
            shared_paths=spec.shared_paths,
            hard_links=hard_links(spec, server),
        )

    try:
        return attempt()
    except LockHeld as held:
        if not held.owner or held.owner == owner or not spec.lock_owner_finished(held.owner):
            raise
        return attempt(take_over_from=held.owner)


@dataclasses.dataclass
class EarlyPreparation:
    """One server's connection, lock and new release, made while the build runs."""

    server: ServerSpec
    connection: Connection | None = None
    prepared: release.Prepared | None = None
    #: The lock may be this deployment's (a trip that failed may have taken it).
    maybe_locked: bool = False


class EarlyStart:
    """Connect to the servers that go first and lock and start the new release there while
    the worker checks the revision out and lists it: that work needs only the release's name,
    known once the revision is resolved (``deliver`` then adopts it, see ServerRun.adopt).

    Only where nothing can run in between (no build commands: a build may take minutes, with
    the servers locked meanwhile), with the parallel and prepare-then-switch strategies (the
    others choose their servers as they go), for SSH servers with atomic releases reached
    directly (not through a jump host), and the first ``max_parallel`` of them. A failure is
    left for ``prepare`` to meet again (and report); ``abandon`` undoes it all when the build
    fails or is cancelled.
    """

    def __init__(self, spec: DeploySpec, revision: str, reporter: Reporter) -> None:
        self.spec = spec
        self.reporter = reporter
        self.name = release.release_name(revision, spec.started_at)
        self._done: dict[int, EarlyPreparation] = {}
        self._lock = threading.Lock()
        #: ``deliver`` took the servers over: from then on its runs undo what needs undoing.
        self.adopted = False
        self._pool: ThreadPoolExecutor | None = None
        limit = min(spec.max_parallel, spec.strategy.max_parallel)
        chosen = [s for s in spec.servers if self.eligible(spec, s)][:limit]
        if chosen:
            self._pool = ThreadPoolExecutor(
                max_workers=len(chosen), thread_name_prefix="early-start"
            )
            for server in chosen:
                self._pool.submit(self._start, server)

    @staticmethod
    def eligible(spec: DeploySpec, server: ServerSpec) -> bool:
        build = spec.build
        return (
            (not build.build_commands or build.skip_build)
            and not spec.config_only
            and spec.strategy.kind in (PARALLEL, PREPARE_THEN_SWITCH)
            and server.atomic
            and server.shell
            and not server.without_ssh
            and server.endpoint.jump is None
        )

    def _start(self, server: ServerSpec) -> None:
        early = EarlyPreparation(server)
        try:
            self.reporter.check_cancelled()
            with self.reporter.step("connect", server.id):
                pool = self.spec.connections
                early.connection = (
                    pool.take(server.endpoint) if pool is not None else connect(server.endpoint)
                )
            layout = release.RemoteLayout(early.connection, server.deploy_path)
            with self.reporter.step("prepare", server.id):
                try:
                    early.prepared = lock_and_prepare(layout, self.spec, server, self.name)
                except LockHeld:
                    pass
                except BaseException:
                    early.maybe_locked = True
                    raise
            early.maybe_locked = True
        except BaseException as error:  # met again, and reported, by ServerRun.prepare
            logger.debug("Early start on %s failed: %s", server.name, error)
        finally:
            with self._lock:
                self._done[server.id] = early
            self.reporter.thread_finished()

    def wait(self) -> dict[int, EarlyPreparation]:
        """Every early start, once all have ended, by server id."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        with self._lock:
            return dict(self._done)

    def abandon(self) -> None:
        """The build failed or was cancelled: remove each unfinished release made early,
        release each lock taken, give the connections back."""
        for early in self.wait().values():
            if early.connection is None:
                continue
            try:
                if early.maybe_locked:
                    release.RemoteLayout(early.connection, early.server.deploy_path).discard(
                        self.name, unlock_owner=lock_owner(self.spec.deployment_id)
                    )
            except Exception as error:  # the lock goes stale and is taken over in time
                logger.warning("Could not undo the early start on %s: %s", early.server.name, error)
            finally:
                _give_back(self.spec, early.connection)


def _give_back(spec: DeploySpec, connection: Connection) -> None:
    pool = spec.connections
    with contextlib.suppress(Exception):
        if pool is not None:
            pool.give_back(connection)
        else:
            connection.close()


def deliver(
    spec: DeploySpec,
    output: BuildOutput,
    reporter: Reporter,
    *,
    early: EarlyStart | None = None,
) -> list[ServerResult]:
    """Take the built release to every server of ``spec`` with its strategy; ``early``: what
    was started on the servers while the build ran (EarlyStart), adopted here."""
    name = release.release_name(output.revision, spec.started_at)
    seeds = shared_seeds(spec.build, output.root, spec.shared_paths) if spec.shared_paths else None
    archives = ArchiveCache(output, seeds)
    runs = [
        ServerRun(spec, server, output, name, archives, reporter, index)
        for index, server in enumerate(spec.servers)
    ]
    if early is not None:
        assert early.name == name
        started = early.wait()
        early.adopted = True
        for run in runs:
            if run.server.id in started:
                run.adopt(started[run.server.id])
    limit = min(spec.max_parallel, spec.strategy.max_parallel)
    try:
        _with_strategy(runs, spec.strategy, reporter, limit)
    finally:
        archives.close()
    return [run.result for run in runs]


def switch_back(spec: RollbackSpec, reporter: Reporter) -> list[ServerResult]:
    """Switch each server of ``spec`` back to its kept release (``spec.targets``) with the
    strategy and health checks of a deployment: in rolling batches, canaries first, or all
    prepared then switched together. A server whose after-switch check fails goes back to
    the release it had; a failed batch or canary switches the servers done so far back too."""
    runs = [RollbackRun(spec, server, reporter, index) for index, server in enumerate(spec.servers)]
    strategy = spec.strategy
    if strategy.kind == BLUE_GREEN:
        # A blue-green group's quick way back is Switch back (the router alone); rolling a
        # deployment back switches releases on its servers in place, all at once.
        strategy = StrategySpec(kind=PARALLEL, max_parallel=strategy.max_parallel)
    _with_strategy(runs, strategy, reporter, min(spec.max_parallel, strategy.max_parallel))
    return [run.result for run in runs]


def _with_strategy(
    runs: Sequence[_Run], strategy: StrategySpec, reporter: Reporter, limit: int
) -> None:
    """Move every run through its phases as ``strategy`` says; never raises for a server.
    Servers behind the same jump host share one connection to it, until every run is done."""
    jumps = JumpHosts()
    once = RunOnce([run.server for run in runs], reporter)
    for run in runs:
        run.jumps = jumps
        run.once = once
    try:
        try:
            if strategy.kind == PREPARE_THEN_SWITCH:
                _prepare_then_switch(runs, reporter, limit)
            elif strategy.kind == ROLLING:
                _rolling(runs, strategy, reporter, limit)
            elif strategy.kind == CANARY:
                _canary(runs, strategy, reporter, limit)
            elif strategy.kind == BLUE_GREEN:
                _blue_green(runs, strategy, reporter, limit)
            else:
                _each(runs, _full, limit=limit, reporter=reporter)
        except Cancelled as stopped:
            # Raised between servers, never inside a server's run (_each records those):
            # every thread is done, and each switched server's result must still be reported.
            _stop(runs, stopped, reporter)
    finally:
        for run in runs:
            run.abandon()
            run.close()
        jumps.close()


def _prepare_then_switch(runs: Sequence[_Run], reporter: Reporter, limit: int) -> None:
    _each(runs, _connect_and_prepare, limit=limit, reporter=reporter)
    if any(_failed(run) for run in runs):
        reason = _failure_reason(runs) or "a server was cancelled"
        reporter.log("system", f"Not switching any server: {reason}")
        for run in runs:
            if not _failed(run):
                run.abandon()
                _mark_untouched([run], f"Not switched: {reason}", cancelled=False)
        return
    reporter.log("system", f"All {len(runs)} servers are prepared: switching them together")
    _each(runs, _activate, limit=len(runs), reporter=reporter)


def _rolling(runs: Sequence[_Run], strategy: StrategySpec, reporter: Reporter, limit: int) -> None:
    batches = strategy.batches(len(runs))
    for number, batch in enumerate(batches, start=1):
        members = [runs[i] for i in batch]
        names = ", ".join(run.server.name for run in members)
        reporter.log("system", f"Batch {number}/{len(batches)}: {names}")
        reporter.check_cancelled()  # stopped before this batch: _with_strategy reports it
        _each(members, _full, limit=limit, reporter=reporter)
        if _aborted_only(members):
            rest = [runs[i] for i in range(batch.stop, len(runs))]
            _mark_untouched(rest, "Aborted before this server's turn", cancelled=True)
            return
        if any(_failed(run) for run in members):
            reason = _failure_reason(members) or "cancelled"
            done = [runs[i] for i in range(0, batch.stop)]
            reporter.log(
                "system",
                f"Batch {number} failed ({reason}): rolling back every server switched so far",
            )
            _revert_switched(done, reason, reporter, limit)
            rest = [runs[i] for i in range(batch.stop, len(runs))]
            _mark_untouched(rest, f"Never touched: {reason}")
            return
        if number < len(batches) and strategy.pause_seconds:
            reporter.log("system", f"Pausing {strategy.pause_seconds:g} s before the next batch")
            _pause(strategy.pause_seconds, reporter)


def _pause(seconds: float, reporter: Reporter) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        reporter.check_cancelled()
        time.sleep(min(left, 0.5))


def _canary(runs: Sequence[_Run], strategy: StrategySpec, reporter: Reporter, limit: int) -> None:
    canaries, rest = runs[: strategy.canary_count], runs[strategy.canary_count :]
    reporter.log("system", f"Canary: {', '.join(run.server.name for run in canaries)}")
    _each(canaries, _full, limit=limit, reporter=reporter)
    if _aborted_only(canaries):
        _mark_untouched(rest, "Aborted before this server's turn", cancelled=True)
        return
    if any(_failed(run) for run in canaries):
        reason = _failure_reason(canaries) or "cancelled"
        _revert_switched(canaries, reason, reporter, limit)
        _mark_untouched(rest, f"Never touched: {reason}")
        return
    if strategy.canary_window_seconds:
        reporter.log("system", f"Watching the canaries for {strategy.canary_window_seconds:g} s")
        problem = _watch(canaries, strategy.canary_window_seconds, reporter)
        if problem:
            _revert_switched(canaries, problem, reporter, limit)
            _mark_untouched(rest, f"Never touched: {problem}")
            return
    if not rest:
        return
    if strategy.promotion == "manual":
        for run in rest:
            reporter.target_state(run.server.id, "waiting", "Waiting for promotion")
        reporter.log("system", "Waiting for someone to promote (or abort) this deployment")
        if not reporter.wait_for_promotion():
            reason = "Aborted: the canaries were rolled back"
            reporter.log("system", reason)
            _revert_switched(canaries, "aborted", reporter, limit)
            _mark_untouched(rest, reason, cancelled=True)
            return
        reporter.log("system", "Promoted: deploying to the other servers")
    for run in rest:
        reporter.target_state(run.server.id, "running")
    _each(rest, _full, limit=limit, reporter=reporter)


def _watch(canaries: Sequence[_Run], window: float, reporter: Reporter) -> str:
    """Run the after-switch checks on the canaries until the window closes; the first problem."""
    deadline = time.monotonic() + window
    while True:
        for run in canaries:
            try:
                run.run_checks(AFTER_SWITCH, run.release_path)
            except HealthCheckFailed as failed:
                return f"{run.server.name}: {failed}"
        interval = (
            min((c.interval_seconds for c in canaries[0].spec.health_checks), default=5.0) or 1.0
        )
        if time.monotonic() + interval > deadline:
            return ""
        _pause(interval, reporter)


def _blue_green(
    runs: Sequence[_Run], strategy: StrategySpec, reporter: Reporter, limit: int
) -> None:
    """Deploy to the idle colour's servers, check them, then have the router send the
    traffic to them. The live colour's servers are never touched (Switch back needs them as
    they are); an unhealthy idle server, or a router that refuses, leaves the traffic where
    it was."""
    assert strategy.router is not None
    live = strategy.live_colour
    idle = other_colour(live)
    going = [run for run in runs if run.server.colour == idle]
    staying = [run for run in runs if run.server.colour != idle]
    if not going:
        problem = UserError(f"The {idle} colour has no servers: nothing to deploy to")
        for run in runs:
            run.fail(problem)
        return
    kept = (
        f"{live} is live: left as it is, for Switch back"
        if live
        else f"No colour is live yet: the first deployment goes to {idle}"
    )
    _mark_untouched(staying, kept)
    reporter.log(
        "system",
        f"Blue-green: deploying to {idle} ({', '.join(run.server.name for run in going)}); "
        + (f"{live} stays live until they are healthy" if live else "no colour is live yet"),
    )
    _each(going, _full, limit=limit, reporter=reporter)
    reason = ""
    if any(_failed(run) for run in going):
        reason = _failure_reason(going) or "cancelled"
    else:
        try:
            reporter.check_cancelled()  # the last safe point before the traffic moves
        except Cancelled as cancelled:
            reason = str(cancelled)
            for run in going:
                run.result.cancelled = True
    if reason:
        reporter.log(
            "system",
            f"Not switching the traffic to {idle}: {reason}"
            + (f"; {live} stays live" if live else ""),
        )
        _revert_switched(going, reason, reporter, limit)
        return
    hosts = [run.server.upstream for run in going]
    try:
        # Not cancellable: a switch stopped half-way would leave the router to be read.
        with reporter.step("switch traffic"):
            router.switch(
                strategy.router,
                colour=idle,
                hosts=hosts,
                log=lambda text: reporter.log("system", text),
            )
    except BaseException as error:
        failure = (
            error
            if isinstance(error, EngineError)
            else InternalError(f"Unexpected error on the router: {type(error).__name__}")
        )
        if not isinstance(error, EngineError):
            logger.error("Switching the router failed", exc_info=error)
        reporter.log(
            "system",
            f"The traffic did not move: {failure}"
            + (f". {live} stays live" if live else "")
            + f"; the {idle} servers keep the new release, idle",
        )
        for run in going:
            # The release is live on the server (its `current`), without traffic.
            run.result.ok = False
            run.result.error = failure
            run.result.switched = bool(run.result.release)
        return
    for run in going:
        run.result.routed = True
    reporter.log(
        "system",
        f"Traffic switched: {idle} is live ({', '.join(hosts)})"
        + (f"; {live} is kept as it was, for Switch back" if live else ""),
    )
