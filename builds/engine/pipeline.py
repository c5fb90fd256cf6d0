"""One deployment, end to end: fetch and build once on the worker, then hand the release to
the servers (builds/engine/rollout.py), or preview it, or roll servers back.

The caller (Django's runner, a benchmark, a test) supplies a spec (builds/engine/specs.py)
and a ``Reporter``; this module never touches a database.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from builds.engine import release, rollout, settings_file
from builds.engine.artefacts import ArtefactStore, StoredArtefact
from builds.engine.build import BuildOutput, BuildSpec, build, checked_out, generated_rules
from builds.engine.errors import (
    EngineError,
    InvalidInput,
    RevisionNotFound,
    UserError,
)
from builds.engine.excludes import Exclusions
from builds.engine.git import DEFAULT_FETCH_TIMEOUT_SECONDS, Commit, Mirror
from builds.engine.manifest import ChangeSet, diff, keep_generated
from builds.engine.rollout import run_commands
from builds.engine.specs import (
    STAGE_AFTER_SWITCH,
    STAGE_BEFORE_SWITCH,
    STAGE_BEFORE_TRANSFER,
    CommandSpec,
    ConfigFileSpec,
    DeployResult,
    DeploySpec,
    Reporter,
    RollbackSpec,
    ServerResult,
    ServerSpec,
    StrategySpec,
)
from builds.engine.ssh import Endpoint, connect

__all__ = [
    "STAGE_AFTER_SWITCH",
    "STAGE_BEFORE_SWITCH",
    "STAGE_BEFORE_TRANSFER",
    "CommandSpec",
    "ConfigFileSpec",
    "DeployResult",
    "DeploySpec",
    "Preview",
    "PromotedArtefact",
    "Reporter",
    "RollbackSpec",
    "ServerResult",
    "ServerSpec",
    "StrategySpec",
    "deploy",
    "preview",
    "promote",
    "rollback",
    "run_commands",
]


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


def open_mirror(
    spec: BuildSpec,
    *,
    fetch_timeout: float = DEFAULT_FETCH_TIMEOUT_SECONDS,
    host_key: str = "",
) -> Mirror:
    """The project's mirror; ``host_key`` is the trusted key of an ssh repository's host."""
    return Mirror(
        spec.mirror_dir,
        spec.repository_url,
        ssh_private_key=spec.ssh_private_key,
        https_token=spec.https_token,
        allow_local=spec.allow_local,
        fetch_timeout=fetch_timeout,
        host_key=host_key or None,
    )


def _fetch(spec: DeploySpec, mirror: Mirror, reporter: Reporter) -> None:
    """Bring the mirror up to date, within the spec's deadline; a cancel stops git at once."""
    mirror.fetch(
        on_line=lambda text: reporter.log("stderr", text),
        check_cancelled=reporter.check_cancelled,
    )


# --------------------------------------------------------------------------- preview


@dataclass(frozen=True)
class Preview:
    """What a deployment of ``revision`` would bring: its commits, and per server id the
    change set it would send. ``built`` is False when the project has build commands that
    did not run (the deployment was asked to skip the build); ``note`` then says so."""

    revision: str
    commits: list[Commit]
    changes: dict[int, ChangeSet]
    #: What each exclude rule left out (see excludes.Exclusions).
    exclusions: Exclusions = field(default_factory=Exclusions)
    built: bool = True
    note: str = ""


def preview(spec: DeploySpec, reporter: Reporter) -> Preview:
    """Commits and file changes per server, computed on the worker; no server is touched.

    The build commands run exactly as a deployment runs them (same checkout, sandbox, watch
    globs and excludes), so the change set and byte count are those of the build's output,
    which is what the deployment would send."""
    mirror = open_mirror(
        spec.build,
        fetch_timeout=spec.fetch_timeout_seconds,
        host_key=spec.repository_host_key,
    )
    with reporter.step("fetch"), mirror_lock(spec.build):
        _fetch(spec, mirror, reporter)
        sha = mirror.resolve(spec.build.revision)
        spec = _with_repository_settings(spec, mirror, sha)
    start = _common_start(spec)
    commits = mirror.commits_between(start, sha) if start != sha else []
    with _built(spec, mirror, sha, _changed_paths(spec, mirror, start, sha), reporter) as output:
        manifest = output.manifest
    generated = generated_rules(spec.build)
    changes = {
        server.id: keep_generated(
            diff(None if spec.full else server.live_manifest, manifest), generated
        )
        for server in spec.servers
    }
    note = ""
    if spec.build.build_commands and spec.build.skip_build:
        note = (
            "The build commands did not run (this preview skips the build, as asked): the "
            "changes are those of the repository's files alone, which is what a deployment "
            "that skips the build sends; one that builds sends the build's output instead."
        )
        reporter.log("system", note)
    return Preview(
        revision=sha,
        commits=commits,
        changes=changes,
        exclusions=output.exclusions,
        built=not note,
        note=note,
    )


def _with_repository_settings(spec: DeploySpec, mirror: Mirror, sha: str) -> DeploySpec:
    """The spec with the revision's .slipway.yml applied by ``spec.settings_from_revision``
    (read from the mirror, no checkout, at most settings_file.MAX_BYTES); unchanged when
    the project does not take settings from its repository."""
    if spec.settings_from_revision is None:
        return spec
    content = mirror.read_file(sha, settings_file.FILE_NAME, max_bytes=settings_file.MAX_BYTES)
    return spec.settings_from_revision(spec, sha, content)


def _common_start(spec: DeploySpec) -> str | None:
    """The revision every server has live, or None when they differ (or none has one)."""
    starts = {server.live_revision for server in spec.servers}
    return next(iter(starts)) if len(starts) == 1 else None


def _changed_paths(
    spec: DeploySpec, mirror: Mirror, start: str | None, sha: str
) -> list[str] | None:
    """The paths changed since ``start`` (for build commands' watch globs); None when unknown
    (first deploy, full deploy, or the old revision is gone: every command runs) or not
    needed (no build command runs)."""
    if start is None or spec.full:
        return None
    if not spec.build.build_commands or spec.build.skip_build:
        return None  # only build commands' watch globs read it: no git diff to wait for
    try:
        return mirror.changed_paths(start, sha)
    except EngineError:
        return None


@contextlib.contextmanager
def _built(
    spec: DeploySpec, mirror: Mirror, sha: str, changed: list[str] | None, reporter: Reporter
) -> Iterator[BuildOutput]:
    """Check ``sha`` out and run the build commands in it; the output is valid inside."""
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
        yield output


# --------------------------------------------------------------------------- deploy


def deploy(spec: DeploySpec, reporter: Reporter) -> DeployResult:
    """Build once, then deliver to every server (``max_parallel`` at a time)."""
    _check_spec(spec)
    mirror = open_mirror(
        spec.build,
        fetch_timeout=spec.fetch_timeout_seconds,
        host_key=spec.repository_host_key,
    )
    with reporter.step("fetch"), mirror_lock(spec.build):
        _fetch(spec, mirror, reporter)
        sha = mirror.resolve(spec.build.revision)
        reporter.log("system", f"Deploying {spec.build.revision} at {sha}")
        _check_provenance(spec, mirror, sha)
        spec = _with_repository_settings(spec, mirror, sha)
        _check_spec(spec)
    reporter.revision_resolved(sha)
    reporter.check_cancelled()
    start = _common_start(spec)
    commits = mirror.commits_between(start, sha, limit=50) if start != sha else []
    first_commit_at = mirror.first_commit_time(start, sha) if start and start != sha else None
    # The servers that go first are connected, locked and given their new release while the
    # revision is checked out and listed (rollout.EarlyStart): the release's name is fixed now.
    if spec.started_at is None:
        spec = dataclasses.replace(spec, started_at=time.time())
    early = (
        rollout.EarlyStart(spec, sha, reporter)
        if any(rollout.EarlyStart.eligible(spec, server) for server in spec.servers)
        else None
    )
    try:
        with _built(
            spec, mirror, sha, _changed_paths(spec, mirror, start, sha), reporter
        ) as output:
            reporter.check_cancelled()
            # Keeping the output creates a file per new object (file creation is what costs
            # most on a worker: seconds for ten thousand files), so it runs beside the
            # delivery, which reads the same files, and is waited for before the workspace
            # is let go (the next build may rewrite them).
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="keep-output") as pool:
                keeping = pool.submit(_keep_in_thread, spec, output, reporter)
                results = rollout.deliver(spec, output, reporter, early=early)
                artefact = keeping.result()
    except BaseException:
        if early is not None and not early.adopted:
            early.abandon()
        raise
    overall = (
        diff(None if spec.full else spec.servers[0].live_manifest, output.manifest)
        if spec.servers
        else None
    )
    return DeployResult(
        revision=sha,
        servers=results,
        commits=commits,
        changes=overall,
        first_commit_at=first_commit_at,
        artefact=artefact,
    )


def _keep_in_thread(
    spec: DeploySpec, output: BuildOutput, reporter: Reporter
) -> StoredArtefact | None:
    try:
        return _keep(spec, output, reporter)
    finally:
        reporter.thread_finished()


def _keep(spec: DeploySpec, output: BuildOutput, reporter: Reporter) -> StoredArtefact | None:
    """Keep the build output in the project's artefact store, for promotion; a failure to
    keep it (a full disk) is logged and the deployment goes on."""
    if spec.artefacts is None:
        return None
    if spec.config_only:
        # The servers keep their live release's files: this build is not what they got, so
        # promoting it would send bytes no server was tested with.
        reporter.log(
            "system",
            "The build output was not kept for promotion: a config-only deployment does not "
            "send it",
        )
        return None
    try:
        stored = spec.artefacts.store(output)
    except (OSError, EngineError) as error:
        reason = error.strerror if isinstance(error, OSError) else str(error)
        reporter.log("system", f"The build output was not kept for promotion: {reason}")
        return None
    reporter.log(
        "system",
        f"Build output kept for promotion as artefact {stored.digest[:12]} "
        f"({stored.files} files, {stored.new_objects} new to the store)",
    )
    return stored


# --------------------------------------------------------------------------- promote


def promote(
    spec: DeploySpec,
    artefact: PromotedArtefact,
    reporter: Reporter,
) -> DeployResult:
    """Deliver a kept build output (builds.engine.artefacts) to ``spec.servers``: no fetch,
    no checkout, no build command. Every file is checked against the artefact's manifest
    before anything is sent (ArtefactCorrupt, ArtefactMissing otherwise, with no server
    touched); the release is then delivered as a deployment's is (rollout.deliver:
    incremental against the live release, kept releases reused). ``spec.build`` is read
    only for its exclude and generated-path rules; ``spec.settings_from_revision`` is not
    applied (the project's settings are)."""
    _check_spec(spec)
    if spec.started_at is None:
        spec = dataclasses.replace(spec, started_at=time.time())
    scratch = artefact.scratch_dir / "artefact"
    shutil.rmtree(scratch, ignore_errors=True)  # left by a worker that died mid-promotion
    try:
        with reporter.step("verify"):
            output = artefact.store.materialise(
                artefact.digest,
                scratch,
                revision=artefact.revision,
                check_cancelled=reporter.check_cancelled,
            )
            files = sum(1 for entry in output.manifest.values() if entry.kind != "dir")
            reporter.log(
                "system",
                f"Promoting artefact of deployment #{artefact.source_deployment_id} "
                f"(revision {artefact.revision[:12]}): no fetch, no build; {files} files "
                f"verified against its manifest {artefact.digest[:12]}",
            )
        reporter.revision_resolved(artefact.revision)
        reporter.check_cancelled()
        results = rollout.deliver(spec, output, reporter)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    overall = (
        diff(None if spec.full else spec.servers[0].live_manifest, output.manifest)
        if spec.servers
        else None
    )
    return DeployResult(revision=artefact.revision, servers=results, changes=overall)


@dataclass(frozen=True)
class PromotedArtefact:
    """The kept build output a promotion sends: the store, the artefact's manifest digest,
    the revision it was built from and the deployment that built it."""

    store: ArtefactStore
    digest: str
    revision: str
    source_deployment_id: int
    #: Where the tree of hard links is laid out (removed after).
    scratch_dir: Path


def reporter_log(reporter: Reporter) -> Callable[[str, str], None]:
    return lambda stream, text: reporter.log(stream, text)


def _check_provenance(spec: DeploySpec, mirror: Mirror, sha: str) -> None:
    """Refuse a pushed revision that is not on its branch, or older than what is live."""
    if spec.require_on_branch:
        head = mirror.branch_head(spec.require_on_branch)
        if head is None or not mirror.is_ancestor(sha, head):
            raise RevisionNotFound(
                f"Revision {sha[:12]} is not on branch {spec.require_on_branch}: not deployed"
            )
    if spec.refuse_older_than_live:
        for server in spec.servers:
            live = server.live_revision
            if (
                live
                and live != sha
                and mirror.resolve_or_none(live)
                and mirror.is_ancestor(sha, live)
            ):
                raise UserError(
                    f"Revision {sha[:12]} is older than {live[:12]}, live on {server.name}: a "
                    "replayed or late delivery is not deployed (roll back on purpose instead)"
                )


def _check_spec(spec: DeploySpec) -> None:
    if not spec.servers:
        raise InvalidInput("servers", "Choose at least one server")
    for config in spec.config_files:
        release.validate_relative_path(config.path, "config_files")
    for shared in spec.shared_paths:
        release.validate_relative_path(shared, "shared_paths")
    for server in spec.servers:
        release.validate_deploy_path(server.deploy_path)


# --------------------------------------------------------------------------- rollback


def rollback(spec: RollbackSpec, reporter: Reporter) -> list[ServerResult]:
    """Switch each server's ``current`` back to a kept release; no build, no upload. The
    servers go with ``spec.strategy`` and ``spec.health_checks`` (rollout.switch_back)."""
    return rollout.switch_back(spec, reporter)


def inspect_server(endpoint: Endpoint, deploy_path: str) -> release.LiveState:
    """Where ``current`` points on one server and whether that release is complete, read
    over SSH without changing anything (reconciling after a worker was lost).

    Raises EngineError: HostUnreachable, AuthenticationRefused, HostKeyMismatch...,
    InvalidInput for a bad deploy path, CommandFailed when the server's shell fails.
    """
    with connect(endpoint) as connection:
        return release.RemoteLayout(connection, deploy_path).inspect()
