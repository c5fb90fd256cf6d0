"""One deployment, end to end: build once on the worker, then each server in parallel.

The caller (Django's runner, a benchmark, a test) supplies a ``DeploySpec`` and a ``Reporter``;
this module never touches a database. Per server it takes the deploy path's lock, starts the
new release as a copy of the live one, sends only what changed as one gzipped tar stream,
writes config files and shared links, runs the commands, switches ``current`` atomically and
cleans up old releases.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import shlex
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from builds.engine import direct, release
from builds.engine.archive import SharedArchive
from builds.engine.build import BuildOutput, BuildSpec, build, checked_out, exclude_rules
from builds.engine.errors import (
    Cancelled,
    EngineError,
    InternalError,
    InvalidInput,
    LockHeld,
    UserError,
)
from builds.engine.git import Commit, Mirror
from builds.engine.manifest import ChangeSet, Manifest, diff
from builds.engine.ssh import Connection, Endpoint, connect
from builds.engine.variables import substitute

STAGE_BEFORE_TRANSFER = "before_transfer"
STAGE_BEFORE_SWITCH = "before_switch"
STAGE_AFTER_SWITCH = "after_switch"


@dataclass(frozen=True)
class ServerSpec:
    id: int
    name: str
    endpoint: Endpoint
    deploy_path: str
    atomic: bool = True
    #: False for SFTP-only servers: no shell, so files go in place and no command runs.
    shell: bool = True
    keep_releases: int = 3
    environment: str = ""
    file_mode: str = ""
    directory_mode: str = ""
    live_release: str | None = None
    live_revision: str | None = None
    live_manifest: Manifest | None = field(default=None, repr=False)

    @property
    def first_deploy(self) -> bool:
        return self.live_revision is None


@dataclass(frozen=True)
class CommandSpec:
    command: str
    stage: str
    description: str = ""
    run_on: str = "always"  # always | first | not_first
    halt_on_error: bool = True
    timeout_seconds: int | None = None
    server_ids: frozenset[int] = frozenset()  # empty: every server

    def applies_to(self, server: ServerSpec) -> bool:
        if self.server_ids and server.id not in self.server_ids:
            return False
        if self.run_on == "first":
            return server.first_deploy
        if self.run_on == "not_first":
            return not server.first_deploy
        return True


@dataclass(frozen=True)
class ConfigFileSpec:
    path: str
    body: str = field(repr=False)
    server_ids: frozenset[int] = frozenset()


@dataclass(frozen=True)
class DeploySpec:
    deployment_id: int
    project: str
    build: BuildSpec
    servers: tuple[ServerSpec, ...]
    branch: str = ""
    deployer: str = ""
    commands: tuple[CommandSpec, ...] = ()
    config_files: tuple[ConfigFileSpec, ...] = ()
    shared_paths: tuple[str, ...] = ()
    server_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    full: bool = False
    config_only: bool = False
    max_parallel: int = 5
    lock_stale_after: int = 3600
    #: Used for the release name, so that every server gets the same one.
    started_at: float | None = None
    #: Asked about a lock's owner ("deployment-12"): True when that deployment has finished
    #: (it died without unlocking), so its lock may be taken over at once.
    lock_owner_finished: Callable[[str], bool] = field(default=lambda owner: False, repr=False)


class Reporter(Protocol):
    def log(self, stream: str, text: str, server: int | None = None) -> None: ...

    def step(
        self, name: str, server: int | None = None
    ) -> contextlib.AbstractContextManager[None]: ...

    def progress(
        self, server: int, files_done: int, files_total: int, bytes_done: int, bytes_total: int
    ) -> None: ...

    def check_cancelled(self) -> None: ...

    def thread_finished(self) -> None:
        """Called at the end of each per-server thread (to release per-thread resources)."""


@dataclass
class ServerResult:
    server_id: int
    ok: bool = False
    cancelled: bool = False
    release: str | None = None
    previous_release: str | None = None
    removed_releases: list[str] = field(default_factory=list)
    manifest: Manifest | None = None
    changes: ChangeSet | None = None
    error: EngineError | None = None


@dataclass
class DeployResult:
    revision: str
    servers: list[ServerResult]
    commits: list[Commit] = field(default_factory=list)
    changes: ChangeSet | None = None

    @property
    def ok(self) -> bool:
        return all(result.ok for result in self.servers)


@contextlib.contextmanager
def mirror_lock(spec: BuildSpec) -> Iterator[None]:
    """One fetch at a time per mirror on this worker: git's ref locks refuse concurrent fetches."""
    spec.mirror_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(spec.mirror_dir.parent / (spec.mirror_dir.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_mirror(spec: BuildSpec) -> Mirror:
    return Mirror(
        spec.mirror_dir,
        spec.repository_url,
        ssh_private_key=spec.ssh_private_key,
        https_token=spec.https_token,
        allow_local=spec.allow_local,
    )


# --------------------------------------------------------------------------- preview


@dataclass(frozen=True)
class Preview:
    revision: str
    commits: list[Commit]
    changes: dict[int, ChangeSet]


def preview(spec: DeploySpec, reporter: Reporter) -> Preview:
    """Commits and file changes per server, computed on the worker; no server is touched."""
    mirror = open_mirror(spec.build)
    with reporter.step("fetch"), mirror_lock(spec.build):
        mirror.fetch(on_line=lambda text: reporter.log("stderr", text))
        sha = mirror.resolve(spec.build.revision)
    with (
        reporter.step("checkout"),
        checked_out(spec.build, mirror, sha, reporter_log(reporter)) as tree,
    ):
        manifest = Manifest.build(
            tree.root, exclude_rules(spec.build, tree.root), cache=tree.hash_cache
        )
    starts = {server.live_revision for server in spec.servers}
    start = next(iter(starts)) if len(starts) == 1 else None
    commits = mirror.commits_between(start, sha) if start != sha else []
    changes = {
        server.id: diff(None if spec.full else server.live_manifest, manifest)
        for server in spec.servers
    }
    return Preview(revision=sha, commits=commits, changes=changes)


# --------------------------------------------------------------------------- deploy


def deploy(spec: DeploySpec, reporter: Reporter) -> DeployResult:
    """Build once, then deliver to every server (``max_parallel`` at a time)."""
    _check_spec(spec)
    mirror = open_mirror(spec.build)
    with reporter.step("fetch"), mirror_lock(spec.build):
        mirror.fetch(on_line=lambda text: reporter.log("stderr", text))
        sha = mirror.resolve(spec.build.revision)
        reporter.log("system", f"Deploying {spec.build.revision} at {sha}")
    reporter.check_cancelled()
    starts = {server.live_revision for server in spec.servers}
    start = next(iter(starts)) if len(starts) == 1 else None
    commits = mirror.commits_between(start, sha, limit=50) if start != sha else []
    changed: list[str] | None = None
    if start is not None and not spec.full:
        try:
            changed = mirror.changed_paths(start, sha)
        except EngineError:
            changed = None  # the old revision is gone from the repository: run every command

    with contextlib.ExitStack() as stack:
        with reporter.step("checkout"):
            tree = stack.enter_context(checked_out(spec.build, mirror, sha, reporter_log(reporter)))
        with reporter.step("build"):
            output = build(
                spec.build,
                tree=tree,
                sha=sha,
                changed=changed,
                log=reporter_log(reporter),
                check_cancelled=reporter.check_cancelled,
            )
            reporter.log(
                "system",
                f"Build output: {len(output.manifest)} entries, {output.manifest.total_bytes} bytes",
            )
        reporter.check_cancelled()
        results = _deliver_all(spec, output, reporter)
    overall = (
        diff(None if spec.full else spec.servers[0].live_manifest, output.manifest)
        if spec.servers
        else None
    )
    return DeployResult(revision=sha, servers=results, commits=commits, changes=overall)


def _with_drift(changes: ChangeSet, prepared: release.Prepared, manifest: Manifest) -> ChangeSet:
    """Add the paths changed on the server since Slipway wrote the live release: those in the
    new build are sent again, the others removed (config files and shared links are written
    again anyway), so the release holds exactly the build."""
    if not prepared.drifted:
        return changes
    drifted = set(prepared.drifted)
    sending = set(changes.added) | set(changes.modified)
    resend = {
        p for p in drifted if p in manifest and manifest[p].kind != "dir" and p not in sending
    }
    remove = {p for p in drifted if p not in manifest}
    modified = sorted(set(changes.modified) | resend)
    return ChangeSet(
        added=changes.added,
        modified=modified,
        deleted=sorted(set(changes.deleted) | remove),
        bytes_to_send=changes.bytes_to_send
        + sum(manifest[p].size for p in resend if manifest[p].kind == "file"),
    )


def reporter_log(reporter: Reporter) -> Callable[[str, str], None]:
    return lambda stream, text: reporter.log(stream, text)


def _deliver_all(spec: DeploySpec, output: BuildOutput, reporter: Reporter) -> list[ServerResult]:
    name = release.release_name(output.revision, spec.started_at)
    archives = _ArchiveCache(output)
    try:
        with ThreadPoolExecutor(
            max_workers=max(1, min(spec.max_parallel, len(spec.servers)))
        ) as pool:
            futures = [
                pool.submit(_deliver, spec, server, output, name, archives, reporter)
                for server in spec.servers
            ]
            return [future.result() for future in futures]
    finally:
        archives.close()


def _check_spec(spec: DeploySpec) -> None:
    if not spec.servers:
        raise InvalidInput("servers", "Choose at least one server")
    for config in spec.config_files:
        release.validate_relative_path(config.path, "config_files")
    for shared in spec.shared_paths:
        release.validate_relative_path(shared, "shared_paths")
    for server in spec.servers:
        release.validate_deploy_path(server.deploy_path)


class _ArchiveCache:
    """Each distinct change set is archived once and streamed to every server needing it."""

    def __init__(self, output: BuildOutput) -> None:
        self.output = output
        self._lock = threading.Lock()
        self._archives: dict[str, SharedArchive] = {}
        self._dir = tempfile.TemporaryDirectory(prefix="slipway-tar-")

    def archive_for(self, paths: Sequence[str], codec: str) -> SharedArchive:
        key = hashlib.sha256("\0".join([codec, *paths]).encode()).hexdigest()
        with self._lock:
            if key not in self._archives:
                self._archives[key] = SharedArchive(
                    self.output.root, paths, self.output.manifest, Path(self._dir.name), codec=codec
                )
            return self._archives[key]

    def close(self) -> None:
        with self._lock:
            archives = list(self._archives.values())
        for archive in archives:
            with contextlib.suppress(BaseException):
                archive.wait()
        self._dir.cleanup()


def _variables(
    spec: DeploySpec, server: ServerSpec, layout_release: str, name: str, sha: str
) -> dict[str, str]:
    deploy_path = release.validate_deploy_path(server.deploy_path)
    return {
        "release_path": layout_release,
        "shared_path": f"{deploy_path}/shared",
        "current_path": f"{deploy_path}/current",
        "deploy_path": deploy_path,
        "startrev": server.live_revision or "",
        "endrev": sha,
        "branch": spec.branch,
        "environment": server.environment,
        "deployer": spec.deployer,
        "project": spec.project,
        "server": server.name,
        "release": name,
    }


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
) -> None:
    """Run the stage's commands on one server in ``workdir``, output streamed to the log."""
    exports = "".join(
        f"export {name}={shlex.quote(value)}\n" for name, value in env.items() if _env_name_ok(name)
    )
    for command in commands:
        if command.stage != stage or not command.applies_to(server):
            continue
        reporter.check_cancelled()
        text = substitute(command.command, variables)
        reporter.log("system", f"$ {text}", server.id)
        script = f"{exports}cd -- {shlex.quote(workdir)} || exit $?\n{text}\n"
        result = connection.run(
            "sh -c " + shlex.quote(script),
            on_line=lambda stream, line: reporter.log(stream, line, server.id),
            timeout=command.timeout_seconds,
            check=command.halt_on_error,
        )
        if result.exit_code != 0:
            reporter.log(
                "system",
                f"Exited with {result.exit_code}; going on (halt on error is off)",
                server.id,
            )


def _env_name_ok(name: str) -> bool:
    return name.isidentifier() and name.isascii()


def _deliver(
    spec: DeploySpec,
    server: ServerSpec,
    output: BuildOutput,
    name: str,
    archives: _ArchiveCache,
    reporter: Reporter,
) -> ServerResult:
    result = ServerResult(server_id=server.id, previous_release=server.live_release)
    try:
        reporter.check_cancelled()
        with reporter.step("connect", server.id):
            connection = connect(server.endpoint)
        with connection:
            if server.atomic and server.shell:
                _deliver_atomic(spec, server, output, name, archives, reporter, connection, result)
            else:
                direct.deliver(spec, server, output, reporter, connection, result)
        result.ok = True
    except Cancelled as exc:
        result.cancelled = True
        result.error = exc
        reporter.log("system", "Cancelled; the live release was left as it was", server.id)
    except EngineError as exc:
        result.error = exc
        reporter.log("system", f"Failed: {exc}", server.id)
    except Exception as exc:  # ours: keep the detail for the operator, not the page
        result.error = InternalError(f"Unexpected error on {server.name}: {type(exc).__name__}")
        reporter.log("system", f"Failed: {result.error}", server.id)
        logging.getLogger(__name__).exception("Deploying to %s failed", server.name)
    finally:
        reporter.thread_finished()
    return result


def lock_owner(deployment_id: int) -> str:
    return f"deployment-{deployment_id}"


def _lock_and_prepare(
    layout: release.RemoteLayout,
    name: str,
    *,
    spec: DeploySpec,
    server: ServerSpec,
    reporter: Reporter,
) -> release.Prepared:
    """Lock and start the release in one trip; take over a lock whose owner has finished."""
    arguments = dict(
        holder=f"Slipway deployment #{spec.deployment_id} by {spec.deployer or 'unknown'}",
        owner_id=lock_owner(spec.deployment_id),
        stale_after=spec.lock_stale_after,
        expected_live=server.live_release,
        incremental=not spec.full and server.live_manifest is not None,
    )
    try:
        prepared = layout.lock_and_prepare(name, **arguments)  # type: ignore[arg-type]
    except LockHeld as held:
        if (
            not held.owner
            or held.owner == arguments["owner_id"]
            or not spec.lock_owner_finished(held.owner)
        ):
            raise
        prepared = layout.lock_and_prepare(name, take_over_from=held.owner, **arguments)  # type: ignore[arg-type]
    for note in prepared.notes:
        reporter.log("system", note[:1].upper() + note[1:], server.id)
    return prepared


def _deliver_atomic(
    spec: DeploySpec,
    server: ServerSpec,
    output: BuildOutput,
    name: str,
    archives: _ArchiveCache,
    reporter: Reporter,
    connection: Connection,
    result: ServerResult,
) -> None:
    layout = release.RemoteLayout(connection, server.deploy_path)
    owner = lock_owner(spec.deployment_id)
    release_path = layout.release_path(name)
    variables = _variables(spec, server, release_path, name, output.revision)
    env = dict(spec.server_env)

    def commands(stage: str, workdir: str, label: str) -> None:
        if any(c.stage == stage and c.applies_to(server) for c in spec.commands):
            with reporter.step(label, server.id):
                run_commands(
                    connection,
                    spec.commands,
                    stage=stage,
                    server=server,
                    workdir=workdir,
                    variables=variables,
                    env=env,
                    reporter=reporter,
                )

    locked = False
    try:
        with reporter.step("transfer", server.id):
            prepared = _lock_and_prepare(layout, name, spec=spec, server=server, reporter=reporter)
            locked = True
            result.previous_release = prepared.live
            if spec.config_only:
                if not prepared.copied or server.live_manifest is None:
                    raise UserError(
                        f"{server.name}: a config-only deployment needs a live release made by Slipway"
                    )
                manifest = server.live_manifest
                changes = ChangeSet()
            else:
                manifest = output.manifest
                changes = _with_drift(
                    diff(server.live_manifest if prepared.copied else None, output.manifest),
                    prepared,
                    output.manifest,
                )
                if prepared.drifted:
                    reporter.log(
                        "system",
                        f"{len(prepared.drifted)} paths were changed on the server since the last deployment "
                        "(by a command or by hand); they are restored in the new release",
                        server.id,
                    )
            result.changes = changes
            reporter.log(
                "system",
                f"{len(changes.added)} added, {len(changes.modified)} modified, {len(changes.deleted)} deleted; "
                f"{changes.bytes_to_send} bytes to send"
                + ("" if prepared.copied else " (full upload)"),
                server.id,
            )
        # Before-transfer commands see the live release; the new one only exists unfinished.
        commands(
            STAGE_BEFORE_TRANSFER,
            current_or_root(layout, prepared.live),
            "commands before transfer",
        )
        with reporter.step("upload", server.id):
            files_total = len(changes.paths_to_send)
            reporter.progress(server.id, 0, files_total, 0, changes.bytes_to_send)
            removals = changes.deleted + [p for p in changes.modified if manifest[p].kind != "dir"]
            if changes.paths_to_send:
                archive = archives.archive_for(changes.paths_to_send, prepared.codec)
                sent = [0]

                def counted() -> Iterator[bytes]:
                    for chunk in archive.chunks():
                        sent[0] += len(chunk)
                        files_done, bytes_done = archive.carried(sent[0])
                        reporter.progress(
                            server.id, files_done, files_total, bytes_done, changes.bytes_to_send
                        )
                        yield chunk

                layout.upload(name, counted(), remove=removals, codec=archive.codec)
            elif removals:
                layout.upload(name, None, remove=removals)
            reporter.progress(
                server.id, files_total, files_total, changes.bytes_to_send, changes.bytes_to_send
            )
            reporter.check_cancelled()
            files = {
                release.validate_relative_path(config.path, "config_files"): substitute(
                    config.body, variables
                ).encode()
                for config in spec.config_files
                if not config.server_ids or server.id in config.server_ids
            }
            layout.finish(
                name,
                files=files,
                manifest_json=manifest.to_json(),
                shared_paths=spec.shared_paths,
                file_mode=server.file_mode,
                directory_mode=server.directory_mode,
            )
        result.manifest = manifest
        commands(STAGE_BEFORE_SWITCH, release_path, "commands before switch")
        reporter.check_cancelled()  # the last safe point: after the switch, the release is live

        has_after = any(
            c.stage == STAGE_AFTER_SWITCH and c.applies_to(server) for c in spec.commands
        )
        protect = [prepared.live] if prepared.live else []
        with reporter.step("switch", server.id):
            cleaned = layout.switch_and_clean_up(
                name,
                keep=None if has_after else server.keep_releases,
                protect=protect,
                unlock_owner="" if has_after else owner,
            )
            result.release = name
            reporter.log("system", f"current → releases/{name}", server.id)
        if has_after:
            commands(STAGE_AFTER_SWITCH, release_path, "commands after switch")
            cleaned = layout.clean_up(
                keep=server.keep_releases, protect=[name, *protect], unlock_owner=owner
            )
        locked = False
        result.removed_releases = cleaned.removed
        if cleaned.removed:
            reporter.log("system", f"Removed old releases: {', '.join(cleaned.removed)}", server.id)
    except BaseException:
        if locked:
            with contextlib.suppress(Exception):
                if result.release is None:
                    # The new release never went live: drop it, so no half-made release lingers.
                    layout.discard(name, unlock_owner=owner)
                else:
                    layout.unlock(owner_id=owner)
        raise


def current_or_root(layout: release.RemoteLayout, live: str | None) -> str:
    return layout.current_path if live else layout.deploy_path


# --------------------------------------------------------------------------- rollback


@dataclass(frozen=True)
class RollbackSpec:
    deployment_id: int
    project: str
    servers: tuple[ServerSpec, ...]
    #: server id -> release name to switch to
    targets: Mapping[int, str]
    #: server id -> revision of that release (for %endrev%)
    revisions: Mapping[int, str] = field(default_factory=dict)
    branch: str = ""
    deployer: str = ""
    commands: tuple[CommandSpec, ...] = ()
    server_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    max_parallel: int = 5
    lock_stale_after: int = 3600
    lock_owner_finished: Callable[[str], bool] = field(default=lambda owner: False, repr=False)


def rollback(spec: RollbackSpec, reporter: Reporter) -> list[ServerResult]:
    """Switch each server's ``current`` back to a kept release; no build, no upload."""

    def one(server: ServerSpec) -> ServerResult:
        result = ServerResult(server_id=server.id, previous_release=server.live_release)
        target = spec.targets.get(server.id)
        try:
            if not target or not release.is_release_name(target):
                raise InvalidInput("release", f"{server.name}: no release to roll back to")
            with reporter.step("connect", server.id):
                connection = connect(server.endpoint)
            with connection:
                if not (server.atomic and server.shell):
                    raise UserError(
                        f"{server.name} is not an atomic server: there are no releases to switch between"
                    )
                layout = release.RemoteLayout(connection, server.deploy_path)
                owner = lock_owner(spec.deployment_id)
                holder = f"Slipway rollback #{spec.deployment_id} by {spec.deployer or 'unknown'}"
                try:
                    layout.lock(holder=holder, owner_id=owner, stale_after=spec.lock_stale_after)
                except LockHeld as held:
                    if not held.owner or not spec.lock_owner_finished(held.owner):
                        raise
                    layout.lock(
                        holder=holder,
                        owner_id=owner,
                        stale_after=spec.lock_stale_after,
                        take_over_from=held.owner,
                    )
                try:
                    with reporter.step("switch", server.id):
                        layout.check_release(target)
                        result.previous_release = layout.live_release()
                        layout.switch(target)
                        result.release = target
                        reporter.log("system", f"current → releases/{target}", server.id)
                    release_path = layout.release_path(target)
                    dspec = DeploySpec(
                        deployment_id=spec.deployment_id,
                        project=spec.project,
                        build=_NO_BUILD,
                        servers=(server,),
                        branch=spec.branch,
                        deployer=spec.deployer,
                    )
                    variables = _variables(
                        dspec, server, release_path, target, spec.revisions.get(server.id, "")
                    )
                    if any(
                        c.stage == STAGE_AFTER_SWITCH and c.applies_to(server)
                        for c in spec.commands
                    ):
                        with reporter.step("commands after switch", server.id):
                            run_commands(
                                connection,
                                spec.commands,
                                stage=STAGE_AFTER_SWITCH,
                                server=server,
                                workdir=release_path,
                                variables=variables,
                                env=spec.server_env,
                                reporter=reporter,
                            )
                finally:
                    with contextlib.suppress(Exception):
                        layout.unlock(owner_id=owner)
            result.ok = True
        except Cancelled as exc:
            result.cancelled = True
            result.error = exc
        except EngineError as exc:
            result.error = exc
            reporter.log("system", f"Failed: {exc}", server.id)
        finally:
            reporter.thread_finished()
        return result

    with ThreadPoolExecutor(max_workers=max(1, min(spec.max_parallel, len(spec.servers)))) as pool:
        return list(pool.map(one, spec.servers))


_NO_BUILD = BuildSpec(
    repository_url="",
    mirror_dir=Path("."),
    workspace_dir=Path("."),
    cache_dir=Path("."),
    revision="",
)
