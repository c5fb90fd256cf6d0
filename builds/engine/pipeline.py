"""One deployment, end to end: fetch and build once on the worker, then hand the release to
the servers (builds/engine/rollout.py), or preview it, or roll servers back.

The caller (Django's runner, a benchmark, a test) supplies a spec (builds/engine/specs.py)
and a ``Reporter``; this module never touches a database.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from builds.engine import release, rollout
from builds.engine.build import BuildSpec, build, checked_out, exclude_rules, generated_rules
from builds.engine.errors import (
    EngineError,
    InvalidInput,
    RevisionNotFound,
    UserError,
)
from builds.engine.excludes import Exclusions
from builds.engine.git import DEFAULT_FETCH_TIMEOUT_SECONDS, Commit, Mirror
from builds.engine.manifest import ChangeSet, Manifest, diff, keep_generated
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

__all__ = [
    "STAGE_AFTER_SWITCH",
    "STAGE_BEFORE_SWITCH",
    "STAGE_BEFORE_TRANSFER",
    "CommandSpec",
    "ConfigFileSpec",
    "DeployResult",
    "DeploySpec",
    "Preview",
    "Reporter",
    "RollbackSpec",
    "ServerResult",
    "ServerSpec",
    "StrategySpec",
    "deploy",
    "preview",
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
    revision: str
    commits: list[Commit]
    changes: dict[int, ChangeSet]
    #: What each exclude rule left out (see excludes.Exclusions).
    exclusions: Exclusions = field(default_factory=Exclusions)


def preview(spec: DeploySpec, reporter: Reporter) -> Preview:
    """Commits and file changes per server, computed on the worker; no server is touched."""
    mirror = open_mirror(
        spec.build,
        fetch_timeout=spec.fetch_timeout_seconds,
        host_key=spec.repository_host_key,
    )
    with reporter.step("fetch"), mirror_lock(spec.build):
        _fetch(spec, mirror, reporter)
        sha = mirror.resolve(spec.build.revision)
    with (
        reporter.step("checkout"),
        checked_out(spec.build, mirror, sha, reporter_log(reporter)) as tree,
    ):
        exclusions = Exclusions()
        manifest = Manifest.build(
            tree.root,
            exclude_rules(spec.build, tree.root, tree.export_ignored),
            cache=tree.hash_cache,
            exclusions=exclusions,
        )
    for line in exclusions.lines():
        reporter.log("system", line)
    starts = {server.live_revision for server in spec.servers}
    start = next(iter(starts)) if len(starts) == 1 else None
    commits = mirror.commits_between(start, sha) if start != sha else []
    generated = generated_rules(spec.build)
    changes = {
        server.id: keep_generated(
            diff(None if spec.full else server.live_manifest, manifest), generated
        )
        for server in spec.servers
    }
    return Preview(revision=sha, commits=commits, changes=changes, exclusions=exclusions)


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
        results = rollout.deliver(spec, output, reporter)
    overall = (
        diff(None if spec.full else spec.servers[0].live_manifest, output.manifest)
        if spec.servers
        else None
    )
    return DeployResult(revision=sha, servers=results, commits=commits, changes=overall)


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
