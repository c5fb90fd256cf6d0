"""What a deployment is asked to do (inputs), how it reports (the Reporter), and what each
server ended with (results). Plain dataclasses: the Django runner, the benchmark and the
tests build them; the engine never reads a database."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from builds.engine import release
from builds.engine.build import BuildSpec
from builds.engine.errors import EngineError, InvalidInput
from builds.engine.git import DEFAULT_FETCH_TIMEOUT_SECONDS, Commit
from builds.engine.health import HealthCheckSpec
from builds.engine.manifest import ChangeSet, Manifest
from builds.engine.ssh import ConnectionPool, Endpoint

if TYPE_CHECKING:
    from builds.engine.artefacts import ArtefactStore, StoredArtefact
    from builds.engine.ftp import FtpEndpoint
    from builds.engine.router import RouterSpec
    from builds.engine.s3 import S3Endpoint

STAGE_BEFORE_TRANSFER = "before_transfer"
STAGE_BEFORE_SWITCH = "before_switch"
STAGE_AFTER_SWITCH = "after_switch"
#: Only in a rollback (a rollback deployment, or a server switched back after a failed check),
#: right after the switch and before the after-switch commands: reversing migrations...
STAGE_AFTER_ROLLBACK = "after_rollback"

#: How a server's new release starts from its live one (``ServerSpec.release_copy``): hard
#: links when no command of the deployment runs on that server (commands such as package
#: managers may rewrite a file in place, which would change every release sharing it),
#: always hard links, or always a real copy (see docs/servers.md).
RELEASE_COPY_AUTO = "auto"
RELEASE_COPY_HARD_LINKS = "hard_links"
RELEASE_COPY_FULL = "copy"
RELEASE_COPIES = (RELEASE_COPY_AUTO, RELEASE_COPY_HARD_LINKS, RELEASE_COPY_FULL)

# What a deployment does with drift it finds on a server (changes made there since the last
# deployment): restore the build's files (and remove what was added), or fail before the
# switch and list them (docs/drift.md).
ON_DRIFT_RESTORE = "restore"
ON_DRIFT_REFUSE = "refuse"
ON_DRIFT_CHOICES = (ON_DRIFT_RESTORE, ON_DRIFT_REFUSE)

PARALLEL = "parallel"
PREPARE_THEN_SWITCH = "prepare_then_switch"
ROLLING = "rolling"
CANARY = "canary"
BLUE_GREEN = "blue_green"
STRATEGIES = (PARALLEL, PREPARE_THEN_SWITCH, ROLLING, CANARY, BLUE_GREEN)

#: The two colours of a blue-green group (builds.engine.router); blue goes first.
BLUE = "blue"
GREEN = "green"
COLOURS = (BLUE, GREEN)


def other_colour(colour: str) -> str:
    """The colour that is not ``colour``: where a blue-green deployment goes while ``colour``
    is live (blue when none is)."""
    return GREEN if colour == BLUE else BLUE


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
    #: One of RELEASE_COPIES: how a new release starts from the live one.
    release_copy: str = RELEASE_COPY_AUTO
    live_release: str | None = None
    live_revision: str | None = None
    live_manifest: Manifest | None = field(default=None, repr=False)
    #: The manifests of the other releases the server keeps (release name -> manifest): a
    #: file whose content one of them (or the live one) holds is copied on the server
    #: instead of sent (manifest.reuse_sources).
    kept_manifests: Mapping[str, Manifest] = field(default_factory=dict, repr=False)
    #: An FTP or FTPS server: files go in place over FTP (builds.engine.ftp), never over
    #: SSH; ``endpoint`` then only names the host (for %hostname%). Needs atomic and shell off.
    ftp: FtpEndpoint | None = None
    #: An S3-compatible bucket: files become objects by manifest (builds.engine.s3);
    #: ``endpoint`` then only names the host (for %hostname%). Needs atomic and shell off.
    s3: S3Endpoint | None = None
    #: Blue-green groups: the server's colour (BLUE or GREEN), and the address ("host:port")
    #: the group's router sends the colour's traffic to (builds.engine.router).
    colour: str = ""
    upstream: str = ""

    @property
    def without_ssh(self) -> bool:
        """FTP servers and S3 buckets: their module opens its own connections."""
        return self.ftp is not None or self.s3 is not None

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
    #: Runs on one server of the deployment only, the first in its order to reach it (see
    #: rollout.RunOnce); the others log that they skip it.
    run_once: bool = False

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
    """A config file written into every release (or the listed servers' only).

    ``mode`` is octal ("600", "0640"); empty means 600, or 640 when ``group`` is set: config
    files hold secrets, so no other account on the server may read them unless asked for.
    ``group`` (a group name or number) is given the file with ``chgrp`` on servers with a
    shell; SFTP-only servers get the mode only.
    """

    path: str
    body: str = field(repr=False)
    server_ids: frozenset[int] = frozenset()
    mode: str = ""
    group: str = ""

    def __post_init__(self) -> None:
        if self.mode:
            release.validate_mode(self.mode, "mode")
        if self.group:
            release.validate_group(self.group, "group")

    @property
    def file_mode(self) -> str:
        """The octal mode the file is written with ("600", "640" or the one asked for)."""
        return self.mode or ("640" if self.group else "600")


def parse_batch_size(value: str) -> tuple[int, int | None]:
    """A group's ``batch_size`` as (servers, percent): "3" → (3, None); "25%" → (1, 25), the
    percentage of the deployment's servers per batch (StrategySpec). Raises InvalidInput
    naming batch_size."""
    text = str(value).strip()
    try:
        if text.endswith("%"):
            percent = int(text[:-1])
            if not 1 <= percent <= 100:
                raise ValueError
            return 1, percent
        size = int(text)
        if size < 1:
            raise ValueError
        return size, None
    except ValueError:
        raise InvalidInput(
            "batch_size", f"{value!r} must be a number of servers or a percentage such as 25%"
        ) from None


@dataclass(frozen=True)
class StrategySpec:
    """How the servers of one deployment take the new release (see rollout.py)."""

    kind: str = PARALLEL
    #: Servers worked on at once (parallel, prepare_then_switch, the rest after a canary).
    max_parallel: int = 5
    #: Rolling: servers per batch, as a count, or as a percentage of the servers.
    batch_size: int = 1
    batch_percent: int | None = None
    #: Canary: how many servers first, watched for how long, then promoted how.
    canary_count: int = 1
    canary_window_seconds: float = 0.0
    promotion: str = "auto"  # auto | manual
    #: Rolling: wait between batches.
    pause_seconds: float = 0.0
    #: Blue-green: the colour live now ("" before the first switch), and the router whose
    #: switch sends the traffic to the other colour once its servers are healthy.
    live_colour: str = ""
    router: RouterSpec | None = None

    def __post_init__(self) -> None:
        if self.kind not in STRATEGIES:
            raise InvalidInput("strategy", f"{self.kind!r} must be one of {', '.join(STRATEGIES)}")
        if self.max_parallel < 1:
            raise InvalidInput("max_parallel", "must be at least 1")
        if self.batch_size < 1:
            raise InvalidInput("batch_size", "must be at least 1")
        if self.batch_percent is not None and not 1 <= self.batch_percent <= 100:
            raise InvalidInput("batch_size", "a percentage must be between 1% and 100%")
        if self.canary_count < 1:
            raise InvalidInput("canary_count", "must be at least 1")
        if self.canary_window_seconds < 0 or self.pause_seconds < 0:
            raise InvalidInput("canary_window_seconds", "durations cannot be negative")
        if self.promotion not in ("auto", "manual"):
            raise InvalidInput("promotion", "must be 'auto' or 'manual'")
        if self.live_colour not in ("", *COLOURS):
            raise InvalidInput("live_colour", "must be 'blue' or 'green'")
        if self.kind == BLUE_GREEN and self.router is None:
            raise InvalidInput("router", "a blue-green group needs a router")

    def batches(self, count: int) -> list[range]:
        """Consecutive index ranges covering ``count`` servers."""
        size = self.batch_size
        if self.batch_percent is not None:
            size = max(1, (count * self.batch_percent + 99) // 100)
        return [range(start, min(start + size, count)) for start in range(0, count, size)]


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
    health_checks: tuple[HealthCheckSpec, ...] = ()
    strategy: StrategySpec = field(default_factory=StrategySpec)
    full: bool = False
    config_only: bool = False
    #: ON_DRIFT_RESTORE or ON_DRIFT_REFUSE (see ``drift.refuse_drift``).
    on_drift: str = ON_DRIFT_RESTORE
    max_parallel: int = 5
    lock_stale_after: int = 3600
    #: Wall-clock limit of the repository fetch, in seconds (see git.Mirror).
    fetch_timeout_seconds: float = DEFAULT_FETCH_TIMEOUT_SECONDS
    #: The trusted host key of an ssh repository, "<type> <base64>" (see git.Mirror).
    repository_host_key: str = field(default="", repr=False)
    #: Used for the release name, so that every server gets the same one.
    started_at: float | None = None
    #: Asked about a lock's owner ("deployment-12"): True when that deployment has finished
    #: (it died without unlocking), so its lock may be taken over at once.
    lock_owner_finished: Callable[[str], bool] = field(default=lambda owner: False, repr=False)
    #: For revisions a Git host (or anyone with the webhook URL) names: the revision must be on
    #: this branch, and must not be older than what is live (a replayed or late delivery).
    require_on_branch: str = ""
    refuse_older_than_live: bool = False
    #: Where each server's connection comes from and goes back to after the deployment (kept
    #: open for the next one); None: opened for this deployment and closed after it.
    connections: ConnectionPool | None = field(default=None, repr=False)
    #: A rollback of FTP servers and S3 buckets (no symlink to switch): server id -> the
    #: name of the earlier release this deployment's revision is, for the log
    #: (builds.engine.ftp.deliver, builds.engine.s3.deliver).
    rollback_to: Mapping[int, str] = field(default_factory=dict)
    #: Settings as code (docs/settings-as-code.md): called once the revision is resolved
    #: with (this spec, the full SHA, the bytes of its .slipway.yml or None without one),
    #: before anything is built or sent; returns the spec to go on with, or raises
    #: InvalidInput to stop the deployment there. None: the project's settings only.
    settings_from_revision: Callable[[DeploySpec, str, bytes | None], DeploySpec] | None = field(
        default=None, repr=False
    )
    #: Where the build output is kept for promotion (builds.engine.artefacts, docs/promote.md);
    #: None: it is not kept.
    artefacts: ArtefactStore | None = field(default=None, repr=False)


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
    #: Checked like a deployment's: a failed after-switch check switches the server back.
    health_checks: tuple[HealthCheckSpec, ...] = ()
    #: The group's strategy: a rollback goes in the same batches, canaries first...
    strategy: StrategySpec = field(default_factory=StrategySpec)
    max_parallel: int = 5
    lock_stale_after: int = 3600
    lock_owner_finished: Callable[[str], bool] = field(default=lambda owner: False, repr=False)
    #: As DeploySpec.connections.
    connections: ConnectionPool | None = field(default=None, repr=False)


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

    def target_state(self, server: int, state: str, reason: str = "") -> None:
        """A server's state changed while the deployment runs ("waiting" for promotion...)."""

    def revision_resolved(self, sha: str) -> None:
        """The commit being deployed is known (40 hex digits), before anything is built or
        sent: reported to Git hosts as the deployment's start (builds.integrations)."""

    def wait_for_promotion(self) -> bool:
        """Block until someone promotes (True) or cancels (False) a waiting canary deployment;
        False rolls the canaries back here. A reporter that tells an abort apart raises
        Aborted instead: the canaries stay switched for the caller's own rollback."""
        return False


@dataclass
class ServerResult:
    server_id: int
    ok: bool = False
    cancelled: bool = False
    #: The release went live, then was switched back (a failed health check, an abort...).
    rolled_back: bool = False
    #: Never touched (a rolling deployment stopped before this server's batch).
    skipped: bool = False
    #: ``release`` went live and stayed live although the server then failed (an after-switch
    #: command or the clean-up): the database must record it live, as the server has it.
    switched: bool = False
    reason: str = ""
    release: str | None = None
    previous_release: str | None = None
    #: Blue-green: the router sends the traffic to this server now (its colour went live).
    routed: bool = False
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
    #: The earliest author date of the commits the deployment brings (the servers' common
    #: live revision..revision); None for a first deployment, servers on different
    #: revisions, an empty range or a live revision gone from the repository.
    first_commit_at: datetime | None = None
    #: The build output as kept in the project's artefact store (DeploySpec.artefacts);
    #: None when there is no store or keeping it failed (the log says why).
    artefact: StoredArtefact | None = None

    @property
    def ok(self) -> bool:
        return all(result.ok for result in self.servers)


# Ends the lock owner id of a deployment that left a command it could not stop: such a lock
# is only taken over once stale, never because that deployment has finished.
LEFT_RUNNING_SUFFIX = "-left-running"
_LOCK_OWNER = re.compile(rf"deployment-(?P<id>[0-9]{{1,18}})(?P<left>{LEFT_RUNNING_SUFFIX})?")


def lock_owner(deployment_id: int) -> str:
    """The owner id a deployment writes into the locks it takes: ``deployment-<id>``."""
    return f"deployment-{deployment_id}"


@dataclass(frozen=True)
class LockOwner:
    """What a lock's owner id says: the deployment, and whether the lock was kept for a
    command of it that could not be stopped."""

    deployment_id: int
    left_running: bool


def parse_lock_owner(owner: str) -> LockOwner | None:
    """``deployment-12`` or ``deployment-12-left-running``; None for any other owner id."""
    match = _LOCK_OWNER.fullmatch(owner)
    if match is None:
        return None
    return LockOwner(deployment_id=int(match["id"]), left_running=bool(match["left"]))


def variables_for(
    *,
    server: ServerSpec,
    release_path: str,
    name: str,
    revision: str,
    project: str,
    branch: str,
    deployer: str,
    index: int = 0,
    rollback: bool = False,
    previous_release_path: str = "",
) -> dict[str, str]:
    """The ``%variables%`` of one server in one deployment. In a rollback ``revision`` is the
    release going back live and ``server.live_revision`` the one it replaces."""
    deploy_path = release.validate_deploy_path(server.deploy_path)
    return {
        "release_path": release_path,
        "shared_path": f"{deploy_path}/shared",
        "current_path": f"{deploy_path}/current",
        "deploy_path": deploy_path,
        "startrev": server.live_revision or "",
        "endrev": revision,
        "branch": branch,
        "environment": server.environment,
        "deployer": deployer,
        "project": project,
        "server": server.name,
        "hostname": server.endpoint.hostname,
        "release": name,
        # 1 for the first server of the deployment (e.g. run migrations only where it is 1).
        "groupindex": str(index + 1),
        "rollback": "1" if rollback else "0",
        # The release live before this switch (the one a rollback leaves): its code can
        # reverse its own migrations.
        "previous_release_path": previous_release_path,
    }
