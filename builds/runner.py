"""Runs one claimed deployment: turns models into the engine's specs, reports progress into
the database and the live log, and records what each server ended with."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from django.conf import settings
from django.db import DatabaseError, connection
from django.utils import timezone

from builds import notifications, outbound
from builds.artefacts import artefact_record, project_store
from builds.cleanup import project_build_dir
from builds.engine import pipeline, router
from builds.engine.build import BuildCommandSpec, BuildSpec
from builds.engine.content import ContentPolicy
from builds.engine.errors import (
    Aborted,
    ArtefactMissing,
    Cancelled,
    CommandFailed,
    DeploymentTimedOut,
    EngineError,
    InvalidInput,
)
from builds.engine.excludes import Exclusions
from builds.engine.ftp import FtpEndpoint
from builds.engine.git import Commit
from builds.engine.health import HealthCheckSpec
from builds.engine.manifest import ChangeSet, DeferredManifests, Manifest, display_path
from builds.engine.masking import (
    Masker,
)
from builds.engine.remote_build import BuildHost
from builds.engine.s3 import S3Endpoint, parse_object_rules
from builds.engine.sandbox import SandboxPolicy
from builds.engine.settings_file import FILE_NAME
from builds.engine.specs import BLUE_GREEN, parse_batch_size, parse_lock_owner
from builds.engine.ssh import ConnectionPool, Endpoint
from builds.logs import LogWriter
from builds.models import (
    FINAL,
    Deployment,
    DeploymentTarget,
    Kind,
    Status,
    Step,
    TargetStatus,
    Trigger,
)
from builds.services import deployment_broadcast_status, deployment_finish, rollback_release_for
from deployer.db import project_lock, retrying
from projects.models import Project
from projects.secrets import project_secrets
from projects.settings_code import repository_settings
from servers.models import (
    AuthMethod,
    EncodedJSON,
    JumpAuthMethod,
    Protocol,
    Release,
    Server,
    ServerGroup,
)

logger = logging.getLogger(__name__)

# A beat well inside the reaper's timeout (three per timeout, at most every 10 s), so a live
# deployment is never taken for a dead one, whatever SLIPWAY_HEARTBEAT_TIMEOUT says.
HEARTBEAT_SECONDS = min(10.0, settings.HEARTBEAT_TIMEOUT / 3)
# A deployment's error is cut to this many characters (after masking, so no secret is cut in
# two): a failed command's last lines may be long, and the error is on every page and answer
# about the deployment.
ERROR_CHARS = 20_000
CANCEL_POLL_SECONDS = 1.0
#: Seconds the cancel check may go unanswered (the database away) before it fails the work.
CANCEL_UNANSWERED_LIMIT = 60.0
#: This process's SSH connections to servers, kept open between its deployments (and
#: rollbacks) for SLIPWAY_SSH_KEEP_SECONDS; None when that is 0.
CONNECTIONS = (
    ConnectionPool(idle_seconds=settings.SSH_KEEP_SECONDS) if settings.SSH_KEEP_SECONDS else None
)


def time_limit_deadline(deployment: Deployment) -> float | None:
    """When (``time.monotonic()``) a running deployment must stop what it runs: a margin
    (a tenth of the limit, at most a minute) before SLIPWAY_DEPLOYMENT_TIME_LIMIT seconds
    from its start, so that remote commands are killed and locks released before the
    worker's soft time limit (the same setting) interrupts it, which stops no remote
    command. None when it has not started."""
    if deployment.started_at is None:
        return None
    limit = settings.DEPLOYMENT_TIME_LIMIT
    elapsed = (timezone.now() - deployment.started_at).total_seconds()
    return time.monotonic() + limit - min(60, limit // 10) - elapsed


class DatabaseReporter:
    """The engine's Reporter: lines into the LogWriter, steps and progress into rows.

    ``check_cancelled`` also raises DeploymentTimedOut once ``deadline`` (monotonic) passes:
    every command polls it, so the time limit stops them all."""

    def __init__(
        self, deployment: Deployment, writer: LogWriter, *, deadline: float | None = None
    ) -> None:
        self.deployment = deployment
        self.writer = writer
        self.deadline = deadline
        self._cancel_checked = 0.0
        self._unanswered_since: float | None = None
        self._cancelled = False
        self._aborted = False
        self._progress_at: dict[int, float] = {}
        self._lock = threading.Lock()

    def log(self, stream: str, text: str, server: int | None = None) -> None:
        self.writer.write(stream, text, server_id=server)

    @contextlib.contextmanager
    def step(self, name: str, server: int | None = None) -> Iterator[None]:
        row = _create_step(self.deployment.pk, server, name)
        if server is None:
            _update_deployment(self.deployment.pk, stage=name)
        status = TargetStatus.FAILED
        try:
            yield
            status = TargetStatus.SUCCEEDED
        except Cancelled:
            status = TargetStatus.CANCELLED
            raise
        finally:
            _update_step(row.pk, status=status, finished_at=timezone.now())
            self.writer.flush()

    def progress(
        self, server: int, files_done: int, files_total: int, bytes_done: int, bytes_total: int
    ) -> None:
        now = time.monotonic()
        with self._lock:
            final = files_done == files_total
            if not final and now - self._progress_at.get(server, 0.0) < 0.5:
                return
            self._progress_at[server] = now
        _update_target(
            self.deployment.pk,
            server,
            files_done=files_done,
            files_total=files_total,
            bytes_done=bytes_done,
            bytes_total=bytes_total,
        )
        deployment_broadcast_status(self.deployment)

    def thread_finished(self) -> None:
        # Only the engine's per-server threads call this: their connections would linger.

        self.writer.flush()
        connection.close()

    def target_state(self, server: int, state: str, reason: str = "") -> None:
        _update_target(self.deployment.pk, server, status=state, reason=reason[:2000])
        deployment_broadcast_status(self.deployment)

    def revision_resolved(self, sha: str) -> None:
        # Recorded in a savepoint and sent after the commit: it never delays the deployment.
        notifications.revision_resolved(self.deployment, sha)

    def wait_for_promotion(self) -> bool:
        """Poll for Promote, Abort or Cancel (the API and the dashboard set them). Cancel
        rolls the canaries back in this deployment; Abort raises Aborted, and the rollback
        recorded when it ends undoes them (services.deployment_finish)."""
        while True:
            decision = (
                Deployment.objects.filter(pk=self.deployment.pk)
                .values("promote_requested_at", "abort_requested_at", "cancel_requested_at")
                .get()
            )
            if decision["abort_requested_at"]:
                self._aborted = self._cancelled = True
                raise Aborted("Aborted on request")
            if decision["cancel_requested_at"]:
                return False
            if decision["promote_requested_at"]:
                return True
            time.sleep(CANCEL_POLL_SECONDS)

    def check_cancelled(self) -> None:
        now = time.monotonic()
        if self.deadline is not None and now >= self.deadline:
            raise DeploymentTimedOut(
                f"The deployment ran into its time limit ({settings.DEPLOYMENT_TIME_LIMIT} s, "
                "SLIPWAY_DEPLOYMENT_TIME_LIMIT); what it was running was stopped"
            )
        if not self._cancelled and now - self._cancel_checked >= CANCEL_POLL_SECONDS:
            self._cancel_checked = now
            try:
                requests = (
                    Deployment.objects.filter(pk=self.deployment.pk)
                    .values("cancel_requested_at", "abort_requested_at")
                    .get()
                )
            except DatabaseError:
                # The database away for a moment must not stop what runs on the servers:
                # keep the last answer, on a fresh connection next time, for a while.
                connection.close()
                if self._unanswered_since is None:
                    self._unanswered_since = now
                if now - self._unanswered_since < CANCEL_UNANSWERED_LIMIT:
                    return
                raise
            self._unanswered_since = None
            self._aborted = requests["abort_requested_at"] is not None
            self._cancelled = self._aborted or requests["cancel_requested_at"] is not None
        if self._aborted:
            raise Aborted("Aborted on request")
        if self._cancelled:
            raise Cancelled("Cancelled on request")


class Heartbeat:
    def __init__(self, deployment_id: int) -> None:
        self.deployment_id = deployment_id
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, name=f"heartbeat-{deployment_id}", daemon=True
        )

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        from django.db import connection

        try:
            while not self._stop.wait(HEARTBEAT_SECONDS):
                try:
                    Deployment.objects.filter(pk=self.deployment_id, status=Status.RUNNING).update(
                        heartbeat_at=timezone.now()
                    )
                except DatabaseError:
                    # A lost connection must not end the heartbeat (the reaper would then fail
                    # a deployment that runs): the next beat reconnects.
                    logger.warning("Heartbeat of deployment %s failed", self.deployment_id)
                    connection.close()
        finally:
            connection.close()


def endpoint_for(server: Server) -> Endpoint:
    """How to log in to ``server``, its host checked by the SERVERS address policy first
    (raises builds.engine.addresses.AddressRefused). Behind a jump host, the jump host's
    address is the one checked: the server's own address is resolved and reached by the
    jump host, on its network, never by the worker (docs/bastion.md)."""
    jump = jump_endpoint_for(server)
    if jump is None:
        outbound.server_host_check(server.hostname, server.port)
    project = server.project
    private_key: str | None = None
    password: str | None = None
    if server.auth_method == AuthMethod.PASSWORD:
        password = server.password
    elif server.auth_method == AuthMethod.PRIVATE_KEY:
        private_key = server.private_key
    else:
        private_key = project.private_key
    return Endpoint(
        hostname=server.hostname,
        port=server.port,
        username=server.username,
        private_key=private_key,
        password=password,
        host_key_fingerprint=server.host_key_fingerprint or None,
        jump=jump,
    )


def jump_endpoint_for(server: Server) -> Endpoint | None:
    """The jump host ``server`` is reached through, None when it is reached directly; its
    address checked by the SERVERS policy (raises AddressRefused)."""
    if not server.jump_hostname:
        return None
    outbound.server_host_check(server.jump_hostname, server.jump_port)
    return Endpoint(
        hostname=server.jump_hostname,
        port=server.jump_port,
        username=server.jump_username,
        private_key=(
            server.jump_private_key
            if server.jump_auth_method == JumpAuthMethod.PRIVATE_KEY
            else server.project.private_key
        ),
        host_key_fingerprint=server.jump_host_key_fingerprint or None,
    )


def ftp_endpoint_for(server: Server) -> FtpEndpoint:
    """How to log in to an FTP or FTPS ``server``, its host checked by the SERVERS address
    policy first (raises builds.engine.addresses.AddressRefused)."""
    outbound.server_host_check(server.hostname, server.port)
    return FtpEndpoint(
        hostname=server.hostname,
        port=server.port,
        username=server.username,
        password=server.password,
        tls=server.protocol == Protocol.FTPS,
        certificate_fingerprint=server.certificate_fingerprint or None,
        connections=server.ftp_connections,
    )


def s3_endpoint_for(server: Server) -> S3Endpoint:
    """The bucket of an S3 ``server`` and how to reach it. Every request's host (the
    endpoint's, ``<bucket>.<endpoint>`` with virtual-hosted-style addressing, a region's on a
    redirect) is checked by the SERVERS address policy before it is sent (raises
    builds.engine.addresses.AddressRefused)."""
    return S3Endpoint(
        bucket=server.s3_bucket,
        access_key_id=server.s3_access_key_id,
        secret_access_key=server.s3_secret_access_key,
        region=server.s3_region or "us-east-1",
        endpoint_url=server.s3_endpoint_url,
        prefix=server.s3_prefix,
        path_style=server.s3_path_style,
        rules=parse_object_rules(server.s3_object_rules),
        parallel_uploads=server.s3_parallel_uploads,
        check_address=outbound.server_host_check,
    )


def server_spec(server: Server, *, with_manifest: bool = True) -> pipeline.ServerSpec:
    """The engine's view of a server, with the manifests of its live release and of the
    other releases it keeps (not removed: files they hold are copied on the server instead
    of sent). A rollback switches releases and sends no file, so it skips parsing them
    (thousands of entries each)."""
    live = server.live_release()
    manifest = (
        Manifest.from_document(live.manifest) if with_manifest and live and live.manifest else None
    )
    kept: Mapping[str, Manifest] = (
        DeferredManifests(
            list(
                server.releases.filter(removed_at__isnull=True, live=False).values_list(
                    "name", flat=True
                )
            ),
            partial(_kept_manifest, server.pk),
        )
        if with_manifest
        else {}
    )
    if server.without_ssh:
        return pipeline.ServerSpec(
            id=server.pk,
            name=server.name,
            # Only names the host (%hostname%): nothing connects over SSH.
            endpoint=Endpoint(
                hostname=server.hostname, port=server.port, username=server.username or "-"
            ),
            deploy_path=server.deploy_path,
            # Kept as set, for the engine to refuse by name (builds.engine.ftp.refusals).
            atomic=server.atomic,
            shell=False,
            environment=server.environment,
            live_release=live.name if live else None,
            live_revision=live.revision if live else None,
            live_manifest=manifest,
            ftp=ftp_endpoint_for(server) if server.is_ftp else None,
            s3=s3_endpoint_for(server) if server.is_s3 else None,
        )
    return pipeline.ServerSpec(
        id=server.pk,
        name=server.name,
        endpoint=endpoint_for(server),
        deploy_path=server.deploy_path,
        atomic=server.atomic and server.protocol == Protocol.SSH,
        shell=server.protocol == Protocol.SSH,
        keep_releases=server.keep_releases,
        environment=server.environment,
        file_mode=server.file_mode,
        directory_mode=server.directory_mode,
        release_copy=server.release_copy,
        live_release=live.name if live else None,
        live_revision=live.revision if live else None,
        live_manifest=manifest,
        kept_manifests=kept,
    )


def _kept_manifest(server_id: int, name: str) -> Manifest | None:
    """The manifest recorded for ``name`` on the server, read when the engine asks (from a
    delivery thread: its connection is closed by ``thread_finished``); None when that
    release is gone from the records or has no manifest."""
    document = (
        Release.objects.filter(server_id=server_id, name=name, removed_at__isnull=True)
        .values_list("manifest", flat=True)
        .first()
    )
    return Manifest.from_document(document) if document else None


def project_dirs(project: Project) -> tuple[Path, Path]:
    base = project_build_dir(project.pk)
    return base / "mirror.git", base / "cache"


def sandbox_policy(project: Project) -> SandboxPolicy:
    """The operator's sandbox settings with the project's network choice."""
    return SandboxPolicy(
        enabled=settings.BUILD_SANDBOX,
        network=project.build_network,
        private_network=settings.BUILD_PRIVATE_NETWORK,
        build_user=settings.BUILD_USER,
        readonly_paths=settings.BUILD_READONLY_PATHS,
        max_processes=settings.BUILD_MAX_PROCESSES,
        max_open_files=settings.BUILD_MAX_OPEN_FILES,
        memory_mb=settings.BUILD_MEMORY_MB or None,
    )


def build_host() -> BuildHost | None:
    """The operator's build host (SLIPWAY_BUILD_HOST), or None to build on the worker."""
    if not settings.BUILD_HOST:
        return None
    url = urlsplit(settings.BUILD_HOST)
    assert url.hostname is not None and url.username is not None  # checked in settings
    return BuildHost(
        endpoint=Endpoint(
            hostname=url.hostname,
            username=unquote(url.username),
            port=url.port or 22,
            private_key=Path(settings.BUILD_HOST_KEY_FILE).read_text(),
            host_key_fingerprint=settings.BUILD_HOST_FINGERPRINT,
        ),
        base_path=unquote(url.path),
    )


def build_spec(
    deployment: Deployment, scratch: Path, revision: str, *, fetches: bool = True
) -> BuildSpec:
    """The engine's build input. The repository URL is checked again here, right before the
    fetch (DNS answers and symlinks change after a URL is saved): InvalidInput if refused.
    ``fetches=False`` (a promotion, which reads no repository) skips that check."""
    project = deployment.project
    if fetches:
        outbound.repository_check(project.repository_url)
    mirror, cache = project_dirs(project)
    workspace = mirror.parent / "workspace"
    environment = {v.name: v.value for v in project.environment_variables.filter(build=True)}
    return BuildSpec(
        repository_url=project.repository_url,
        mirror_dir=mirror,
        workspace_dir=workspace,
        scratch_dir=scratch,
        cache_dir=cache,
        revision=revision,
        ssh_private_key=project.private_key,
        https_token=project.repository_token or None,
        allow_local=settings.ALLOW_LOCAL_REPOSITORIES,
        subdirectory=project.subdirectory,
        excluded=tuple(project.excluded_files.values_list("pattern", flat=True)),
        managed_paths=tuple(project.shared_paths)
        + tuple(project.config_files.values_list("path", flat=True)),
        cache_paths=tuple(project.cache_paths),
        generated_paths=tuple(project.generated_paths),
        build_commands=tuple(
            BuildCommandSpec(
                command=c.command,
                description=c.description,
                timeout_seconds=c.timeout_seconds,
                halt_on_error=c.halt_on_error,
                watch_globs=tuple(c.watch_globs),
            )
            for c in project.build_commands.all()
        ),
        build_env=environment,
        home_dir=mirror.parent / "home",
        sandbox=sandbox_policy(project),
        build_host=build_host(),
        build_host_folder=f"project-{project.pk}",
        skip_build=deployment.skip_build,
        skip_cache=deployment.skip_cache,
        export_ignore=project.export_ignore,
        # A submodule's URL passes the same outbound rules as the repository's.
        content=ContentPolicy(submodules=project.submodules, check_url=outbound.repository_check),
    )


def command_specs(project: Project) -> tuple[pipeline.CommandSpec, ...]:
    return tuple(
        pipeline.CommandSpec(
            command=c.command,
            stage=c.stage,
            description=c.description,
            run_on=c.run_on,
            halt_on_error=c.halt_on_error,
            timeout_seconds=c.timeout_seconds,
            run_once=c.run_once,
            server_ids=frozenset(c.servers.values_list("pk", flat=True)),
        )
        for c in project.commands.prefetch_related("servers")
    )


def router_spec(group: ServerGroup) -> router.RouterSpec:
    """A blue-green group's router as the engine takes it; InvalidInput naming ``router``
    when it has none (its server was deleted). Its host goes through the servers' address
    policy like any server's (endpoint_for)."""
    server = group.router
    if server is None:
        raise InvalidInput(
            "router", f"Group {group.name} is blue-green but has no router: choose one"
        )
    return router.RouterSpec(
        name=server.name,
        endpoint=endpoint_for(server),
        kind=group.router_kind,
        include_path=group.include_path,
        upstream_name=group.upstream_name,
        nginx_command=group.router_nginx_command,
        switch_command=group.router_switch_command,
    )


def coloured(
    group: ServerGroup | None, specs: tuple[pipeline.ServerSpec, ...]
) -> tuple[pipeline.ServerSpec, ...]:
    """The servers' specs with their blue-green colours and upstream addresses."""
    if group is None:
        return specs
    members = {m.server_id: m for m in group.members.select_related("server")}
    return tuple(
        dataclasses.replace(
            spec,
            colour=members[spec.id].colour,
            upstream=members[spec.id].upstream_address(group.upstream_port),
        )
        if spec.id in members
        else spec
        for spec in specs
    )


def strategy_spec(deployment: Deployment) -> pipeline.StrategySpec:
    """The group's strategy, or the deployment's override; parallel without a group. A
    blue-green one carries the live colour (read fresh) and the router."""
    group = deployment.group
    kind = deployment.strategy or (group.strategy if group is not None else "parallel")
    if group is None:
        return pipeline.StrategySpec(kind=kind)
    size, percent = parse_batch_size(group.batch_size)
    if kind == BLUE_GREEN and deployment.kind == Kind.ROLLBACK:
        # Rolled back in place, every server at once (rollout.switch_back); Switch back is
        # the router's way.
        kind = "parallel"
    blue_green = kind == BLUE_GREEN
    if blue_green:
        group.refresh_from_db(fields=["live_colour"])
    return pipeline.StrategySpec(
        kind=kind,
        max_parallel=group.max_parallel,
        batch_size=size,
        batch_percent=percent,
        canary_count=group.canary_count,
        canary_window_seconds=group.canary_window_seconds,
        promotion=group.promotion,
        pause_seconds=group.pause_seconds,
        live_colour=group.live_colour if blue_green else "",
        router=router_spec(group) if blue_green else None,
    )


def health_check_specs(project: Project) -> tuple[HealthCheckSpec, ...]:
    # HTTP checks reach the servers: the servers' outbound-address policy applies.
    policy = outbound.policy(outbound.SERVERS)
    return tuple(
        HealthCheckSpec(
            kind=check.kind,
            when=check.when,
            url=check.url,
            expected_status=check.expected_status,
            body_contains=check.body_contains,
            command=check.command,
            timeout_seconds=check.timeout_seconds,
            retries=check.retries,
            interval_seconds=check.interval_seconds,
            server_ids=frozenset(check.servers.values_list("pk", flat=True)),
            name=f"#{check.pk}",
            allow_private=policy.allow_private,
            private_hint=policy.private_hint,
        )
        for check in project.health_checks.prefetch_related("servers")
    )


def settings_from_revision(
    deployment: Deployment, reporter: DatabaseReporter
) -> Callable[[pipeline.DeploySpec, str, bytes | None], pipeline.DeploySpec] | None:
    """Settings as code (docs/settings-as-code.md): for a project that takes settings from
    its repository, what the engine calls with the revision's .slipway.yml once the
    revision is known, before anything is built or sent. It records what the file set on
    the deployment (Deployment.settings_file), logs the keys that came from it, and returns
    the spec with those keys' values in place of the project's. An invalid file raises
    SettingsFileError naming its line: the deployment fails there. None otherwise."""
    if not deployment.project.settings_from_repository:
        return None

    def apply(spec: pipeline.DeploySpec, sha: str, content: bytes | None) -> pipeline.DeploySpec:
        record = repository_settings(deployment.project, content, sha)
        values = record.pop("values")
        # Shown on pages and in the API like the log: a secret of the project that the file
        # (or a setting) holds as it is is masked there too.
        _update_deployment(deployment.pk, settings_file=_masked(record, reporter.writer.mask))
        if not record["found"]:
            reporter.log(
                "system", f"No {FILE_NAME} at {sha[:12]}: the project's own settings apply"
            )
            return spec
        keys = record["keys"]
        changed = [key for key in keys if key in record["changed"]]
        reporter.log(
            "system",
            f"Settings from {FILE_NAME} at {sha[:12]}: {', '.join(keys) or 'none'}"
            + (f" (differing from the project's: {', '.join(changed)})" if changed else "")
            + "; the project's own for the rest",
        )
        return spec_with_file_settings(deployment, spec, values)

    return apply


def _masked(value: Any, mask: Callable[[str], str]) -> Any:
    """``value`` (JSON: dicts, lists, text...) with every text masked."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {key: _masked(item, mask) for key, item in value.items()}
    if isinstance(value, list):
        return [_masked(item, mask) for item in value]
    return value


def spec_with_file_settings(
    deployment: Deployment, spec: pipeline.DeploySpec, values: Mapping[str, Any]
) -> pipeline.DeploySpec:
    """``spec`` with the settings a .slipway.yml set (``values``: projects.settings_code's
    checked FILE_KEYS) in place of the project's. The file's commands and health checks run
    on every server; a group's strategy applies to a deployment of that group (the
    deployment's own strategy, when it names one, still wins)."""
    project = deployment.project
    build: dict[str, Any] = {}
    fields: dict[str, Any] = {}
    if "build_commands" in values:
        build["build_commands"] = tuple(
            BuildCommandSpec(
                command=item["command"],
                description=item["description"],
                timeout_seconds=item["timeout_seconds"],
                halt_on_error=item["halt_on_error"],
                watch_globs=tuple(item["watch_globs"]),
            )
            for item in values["build_commands"]
        )
    if "excluded_files" in values:
        build["excluded"] = tuple(values["excluded_files"])
    if "shared_paths" in values:
        fields["shared_paths"] = tuple(values["shared_paths"])
        build["managed_paths"] = fields["shared_paths"] + tuple(
            project.config_files.values_list("path", flat=True)
        )
    if "commands" in values:
        fields["commands"] = tuple(pipeline.CommandSpec(**item) for item in values["commands"])
    if "health_checks" in values:
        policy = outbound.policy(outbound.SERVERS)
        fields["health_checks"] = tuple(
            HealthCheckSpec(
                **item,
                name=f"{FILE_NAME} #{index}",
                allow_private=policy.allow_private,
                private_hint=policy.private_hint,
            )
            for index, item in enumerate(values["health_checks"], start=1)
        )
    group = deployment.group
    strategy = values.get("groups", {}).get(group.name) if group is not None else None
    if strategy:
        changes = {k: v for k, v in strategy.items() if k != "batch_size"}
        if deployment.strategy:
            changes.pop("strategy", None)
        if "strategy" in changes:
            changes["kind"] = changes.pop("strategy")
        if "batch_size" in strategy:
            changes["batch_size"], changes["batch_percent"] = parse_batch_size(
                strategy["batch_size"]
            )
        fields["strategy"] = dataclasses.replace(spec.strategy, **changes)
        fields["max_parallel"] = fields["strategy"].max_parallel
    return dataclasses.replace(spec, build=dataclasses.replace(spec.build, **build), **fields)


def _deployer_name(deployment: Deployment) -> str:
    if deployment.triggered_by is not None:
        return deployment.triggered_by.get_username()
    return deployment.get_trigger_display()


#: A deployment's error when the database connection was lost while it ran.
DATABASE_LOST = (
    "Slipway lost its connection to the database while deploying (restarted or unreachable); "
    "each server's state is as its lines above say. Deploy again once the database is back."
)


def run(deployment: Deployment) -> None:
    """Run a deployment that services.deployment_claim moved to running."""
    deployment = Deployment.objects.select_related(
        "project", "triggered_by", "group", "artefact", "promoted_from"
    ).get(pk=deployment.pk)
    project = deployment.project
    # A preview's targets stay "skipped" (it touches no server) and are read all the same.
    wanted = TargetStatus.SKIPPED if deployment.kind == Kind.PREVIEW else TargetStatus.RUNNING
    targets = list(
        deployment.targets.filter(status=wanted).select_related("server", "server__project")
    )
    servers = [target.server for target in targets]
    writer = LogWriter(deployment.pk, mask=Masker(project_secrets(project, servers)))
    reporter = DatabaseReporter(deployment, writer, deadline=time_limit_deadline(deployment))
    workspace = project_build_dir(project.pk) / f"scratch-{deployment.pk}"
    try:
        with Heartbeat(deployment.pk):
            if deployment.kind == Kind.ROLLBACK:
                _run_rollback(deployment, servers, reporter, workspace)
            elif deployment.kind == Kind.SWITCH:
                _run_switch(deployment, servers, reporter)
            elif deployment.kind == Kind.PREVIEW:
                _run_preview(deployment, servers, reporter, workspace)
            elif deployment.kind == Kind.PROMOTE:
                _run_promote(deployment, servers, reporter, workspace)
            else:
                _run_deploy(deployment, servers, reporter, workspace)
    except Cancelled as stopped:
        # Stopped before any server was switched (the fetch, the build).
        writer.system(
            f"{'Aborted' if isinstance(stopped, Aborted) else 'Cancelled'}; every server stays "
            "on the release it had"
        )
        writer.flush()
        deployment_finish(
            deployment,
            status=Status.CANCELLED,
            error=str(stopped) or "Cancelled on request",
            error_code=stopped.code,
        )
    except EngineError as exc:
        message = (
            str(exc)
            if exc.user_facing
            else "Slipway hit an internal error; the worker's log has the details"
        )
        if not exc.user_facing:
            logger.exception("Deployment %s failed", deployment.pk)
        # A failed command's output is in the log just above: its headline says enough.
        shown = exc.headline if isinstance(exc, CommandFailed) else message
        writer.system(f"Failed: {shown}")
        writer.flush()
        deployment_finish(
            deployment,
            status=Status.FAILED,
            error=writer.mask(message)[:ERROR_CHARS],
            error_code=exc.code,
        )
    except DatabaseError:
        # The database went away mid-run (a restart, a killed connection) for longer than the
        # retries of deployer.db: what reached the servers is in the log and in each server's
        # result; the reaper's reconciliation reads the servers if a switch was not recorded.
        logger.exception("Deployment %s lost its database connection", deployment.pk)
        writer.system(f"Failed: {DATABASE_LOST}")
        writer.flush()
        deployment_finish(
            deployment, status=Status.FAILED, error=DATABASE_LOST, error_code="database_lost"
        )
    except Exception:
        logger.exception("Deployment %s failed", deployment.pk)
        writer.system("Failed: Slipway hit an internal error; the worker's log has the details")
        writer.flush()
        deployment_finish(
            deployment, status=Status.FAILED, error="Internal error", error_code="internal"
        )
    finally:
        writer.close()
        shutil.rmtree(workspace, ignore_errors=True)


def _lock_owner_finished(owner: str) -> bool:
    """A lock left on a server by a deployment that has finished: its worker died, or it kept
    the lock for a command it could not stop (``-left-running``). Taking such a lock over
    first kills the process groups its commands recorded, and leaves the lock where it is
    while one of them will not go (builds.engine.release)."""
    named = parse_lock_owner(owner)
    if named is None:
        return False
    return Deployment.objects.filter(pk=named.deployment_id, status__in=FINAL).exists()


def _revision_for(deployment: Deployment, servers: list[Server]) -> str:
    if deployment.revision:
        return deployment.revision
    branches = {server.effective_branch for server in servers}
    return sorted(branches)[0]


def _deploy_spec(
    deployment: Deployment,
    specs: tuple[pipeline.ServerSpec, ...],
    workspace: Path,
    revision: str,
    *,
    fetches: bool = True,
    **overrides: Any,
) -> pipeline.DeploySpec:
    project = deployment.project
    strategy = strategy_spec(deployment)
    return pipeline.DeploySpec(
        deployment_id=deployment.pk,
        project=project.name,
        build=build_spec(deployment, workspace, revision, fetches=fetches),
        servers=specs,
        branch=deployment.branch or ("" if deployment.revision else revision),
        deployer=_deployer_name(deployment),
        commands=command_specs(project),
        config_files=tuple(
            pipeline.ConfigFileSpec(
                path=c.path,
                body=c.body,
                server_ids=frozenset(c.servers.values_list("pk", flat=True)),
                mode=c.mode,
                group=c.group,
            )
            for c in project.config_files.prefetch_related("servers")
        ),
        shared_paths=tuple(project.shared_paths),
        on_drift=project.on_drift,
        server_env={v.name: v.value for v in project.environment_variables.filter(servers=True)},
        health_checks=health_check_specs(project),
        strategy=strategy,
        # The group's "servers at a time" is the limit (the engine's default would cap it at 5).
        max_parallel=strategy.max_parallel,
        lock_owner_finished=_lock_owner_finished,
        lock_stale_after=settings.DEPLOYMENT_TIME_LIMIT,
        fetch_timeout_seconds=settings.FETCH_TIMEOUT,
        repository_host_key=project.repository_host_key,
        started_at=deployment.started_at.timestamp() if deployment.started_at else None,
        connections=CONNECTIONS,
        **overrides,
    )


def _run_deploy(
    deployment: Deployment, servers: list[Server], reporter: DatabaseReporter, workspace: Path
) -> None:
    revision = _revision_for(deployment, servers)
    specs = coloured(deployment.group, tuple(server_spec(server) for server in servers))
    starts = {spec.live_revision for spec in specs}
    spec = _deploy_spec(
        deployment,
        specs,
        workspace,
        revision,
        # A push names a SHA: it must be on the pushed branch and newer than what is live.
        require_on_branch=deployment.branch if deployment.trigger == Trigger.WEBHOOK else "",
        refuse_older_than_live=deployment.trigger == Trigger.WEBHOOK,
        full=deployment.full,
        config_only=deployment.config_only,
        settings_from_revision=settings_from_revision(deployment, reporter),
        # Kept for promotion (docs/promote.md); a retry's output is kept like any other.
        artefacts=project_store(deployment.project_id),
    )
    result = pipeline.deploy(spec, reporter)
    if result.artefact is not None:
        artefact_record(deployment=deployment, revision=result.revision, stored=result.artefact)
    _update_deployment(
        deployment.pk,
        end_revision=result.revision,
        start_revision=next(iter(starts)) or "" if len(starts) == 1 else "",
        commits=[_commit_json(c) for c in result.commits],
        first_commit_at=result.first_commit_at,
        changes=_changes_json(result.changes),
    )
    routed = {
        spec.colour
        for spec in specs
        if any(r.routed and r.server_id == spec.id for r in result.servers)
    }
    if deployment.group is not None and len(routed) == 1:
        # The router took the switch: recorded before the servers' outcomes and the end.
        _record_live_colour(deployment.group.pk, routed.pop())
    reporter.writer.flush()  # every line is stored before the status says the log is complete
    _record(deployment, result.servers, revision=result.revision, mask=reporter.writer.mask)


def _run_promote(
    deployment: Deployment, servers: list[Server], reporter: DatabaseReporter, workspace: Path
) -> None:
    """Send the kept build output of ``deployment.promoted_from`` (builds.services.
    artefact_promote checked it) to the servers: no fetch, no build (pipeline.promote)."""
    artefact = deployment.artefact
    if artefact is None or artefact.removed_at is not None:
        raise ArtefactMissing(
            "The build output to promote is no longer kept (removed by the project's artefact "
            "retention): deploy the revision again instead"
        )
    specs = coloured(deployment.group, tuple(server_spec(server) for server in servers))
    starts = {spec.live_revision for spec in specs}
    spec = _deploy_spec(
        deployment, specs, workspace, artefact.revision, fetches=False, full=deployment.full
    )
    result = pipeline.promote(
        spec,
        pipeline.PromotedArtefact(
            store=project_store(deployment.project_id),
            digest=artefact.digest,
            revision=artefact.revision,
            source_deployment_id=deployment.promoted_from_id or 0,
            scratch_dir=workspace,
        ),
        reporter,
    )
    start = next(iter(starts)) or "" if len(starts) == 1 else ""
    source = deployment.promoted_from
    # The same range of commits as its source brought (the servers were where the source's
    # were): the same commits and first commit time, for the page and DORA's lead time
    # (builds.dora). Otherwise unknown without the repository, which a promotion never reads.
    same_range = source is not None and bool(start) and start == source.start_revision
    _update_deployment(
        deployment.pk,
        end_revision=result.revision,
        start_revision=start,
        changes=_changes_json(result.changes),
        commits=source.commits if same_range and source is not None else [],
        first_commit_at=source.first_commit_at if same_range and source is not None else None,
    )
    routed = {
        spec.colour
        for spec in specs
        if any(r.routed and r.server_id == spec.id for r in result.servers)
    }
    if deployment.group is not None and len(routed) == 1:
        _record_live_colour(deployment.group.pk, routed.pop())
    reporter.writer.flush()
    _record(deployment, result.servers, revision=result.revision, mask=reporter.writer.mask)


def _run_switch(deployment: Deployment, servers: list[Server], reporter: DatabaseReporter) -> None:
    """Switch back: the router sends a blue-green group's traffic to the colour not live
    (read now), whose servers are as the deployment before left them. No server changes."""
    group = deployment.group
    if group is None:
        raise InvalidInput("group", "A switch needs its group (it was deleted)")
    group.refresh_from_db()
    if not group.is_blue_green or not group.live_colour:
        raise InvalidInput("group", f"Group {group.name} has no live colour to switch back from")
    colour = group.idle_colour
    members = group.members_of(colour)
    hosts = [member.upstream_address(group.upstream_port) for member in members]
    reporter.log(
        "system",
        f"Switching {group.name} back: {group.live_colour} → {colour} ({', '.join(hosts)})",
    )
    with reporter.step("switch traffic"):
        router.switch(
            router_spec(group),
            colour=colour,
            hosts=hosts,
            log=lambda text: reporter.log("system", text),
        )
    _record_live_colour(group.pk, colour)
    reporter.log("system", f"Traffic switched: {colour} is live")
    live = {member.server_id for member in members}
    results = [
        pipeline.ServerResult(
            server_id=server.pk,
            ok=True,
            routed=server.pk in live,
            reason=f"{colour} is live: the router sends the traffic here"
            if server.pk in live
            else f"Idle ({group.live_colour}): kept as it is",
        )
        for server in servers
    ]
    reporter.writer.flush()
    _record(deployment, results, revision=None, mask=reporter.writer.mask)


@retrying
def _record_live_colour(group_id: int, colour: str) -> None:
    ServerGroup.objects.filter(pk=group_id).update(
        live_colour=colour, live_colour_since=timezone.now()
    )


def _run_rollback(
    deployment: Deployment, servers: list[Server], reporter: DatabaseReporter, workspace: Path
) -> None:
    targets: dict[int, str] = {}
    revisions: dict[int, str] = {}
    for server in servers:
        release = rollback_release_for(deployment, server)
        if release is not None:
            targets[server.pk] = release.name
            revisions[server.pk] = release.revision
    # An FTP server or an S3 bucket keeps no release to switch to: its earlier release's
    # revision is built again and what differs from the live files is uploaded
    # (builds.engine.ftp, builds.engine.s3).
    by_revision: dict[str, list[Server]] = {}
    for server in servers:
        if server.without_ssh and server.pk in targets:
            by_revision.setdefault(revisions[server.pk], []).append(server)
    switched = [s for s in servers if not (s.without_ssh and s.pk in targets)]
    results: list[pipeline.ServerResult] = []
    if switched:
        strategy = strategy_spec(deployment)
        spec = pipeline.RollbackSpec(
            deployment_id=deployment.pk,
            project=deployment.project.name,
            servers=tuple(server_spec(server, with_manifest=False) for server in switched),
            targets=targets,
            revisions=revisions,
            deployer=_deployer_name(deployment),
            commands=command_specs(deployment.project),
            server_env={
                v.name: v.value
                for v in deployment.project.environment_variables.filter(servers=True)
            },
            health_checks=health_check_specs(deployment.project),
            strategy=strategy,
            max_parallel=strategy.max_parallel,
            lock_stale_after=settings.DEPLOYMENT_TIME_LIMIT,
            lock_owner_finished=_lock_owner_finished,
            connections=CONNECTIONS,
        )
        results.extend(pipeline.rollback(spec, reporter))
    for revision, group in sorted(by_revision.items()):
        uploaded = _deploy_spec(
            deployment,
            tuple(server_spec(server) for server in group),
            workspace / revision[:12],
            revision,
            rollback_to={server.pk: targets[server.pk] for server in group},
        )
        results.extend(pipeline.deploy(uploaded, reporter).servers)
    ends = set(revisions.values())
    _update_deployment(deployment.pk, end_revision=ends.pop() if len(ends) == 1 else "")
    reporter.writer.flush()
    _record(deployment, results, revision=None, mask=reporter.writer.mask)


def _run_preview(
    deployment: Deployment, servers: list[Server], reporter: DatabaseReporter, workspace: Path
) -> None:
    revision = _revision_for(deployment, servers)
    specs = tuple(server_spec(server) for server in servers)
    spec = pipeline.DeploySpec(
        deployment_id=deployment.pk,
        project=deployment.project.name,
        build=build_spec(deployment, workspace, revision),
        servers=specs,
        full=deployment.full,
        fetch_timeout_seconds=settings.FETCH_TIMEOUT,
        repository_host_key=deployment.project.repository_host_key,
        settings_from_revision=settings_from_revision(deployment, reporter),
    )
    result = pipeline.preview(spec, reporter)
    first = next(iter(result.changes.values()), None)
    starts = {s.live_revision for s in specs}
    _update_deployment(
        deployment.pk,
        end_revision=result.revision,
        start_revision=next(iter(starts)) or "" if len(starts) == 1 else "",
        commits=[_commit_json(c) for c in result.commits],
        changes={**_changes_json(first), "excluded": _exclusions_json(result.exclusions)},
    )
    summary = f"Preview: {len(result.commits)} commits; " + (first or ChangeSet()).summary()
    if not result.built:
        summary += " (build commands not run: see above)"
    reporter.log("system", summary)
    reporter.writer.flush()
    deployment_finish(deployment, status=Status.SUCCEEDED)


def _commit_json(commit: Commit) -> dict[str, object]:
    return {
        "sha": commit.sha,
        "author": commit.author,
        "date": commit.date.isoformat(),
        "subject": commit.subject,
    }


def _exclusions_json(exclusions: Exclusions) -> list[dict[str, Any]]:
    return [
        {
            "pattern": entry.pattern,
            "origin": entry.source,
            "count": entry.count,
            "examples": list(entry.examples),
        }
        for entry in exclusions.rules
    ]


def _changes_json(changes: ChangeSet | None) -> dict[str, Any]:
    """What a deployment stores, the API answers and the page shows: files, not folders."""
    if changes is None:
        return {"added": [], "modified": [], "deleted": [], "bytes": 0}
    changes = changes.files()
    return {
        # Paths as text: a file name that is not UTF-8 cannot go into jsonb (or a page) as is.
        "added": [display_path(path) for path in changes.added],
        "modified": [display_path(path) for path in changes.modified],
        "deleted": [display_path(path) for path in changes.deleted],
        "bytes": changes.bytes_to_send,
    }


def _record(
    deployment: Deployment,
    results: list[pipeline.ServerResult],
    *,
    revision: str | None,
    mask: Masker,
) -> None:
    """Store each server's outcome; reasons and errors (a failed command's last lines) are
    masked like the log. Each server's outcome is one transaction, retried on a deadlock or a
    lost connection (deployer.db): a server whose `current` switched is recorded as live."""
    now = timezone.now()
    for result in results:
        _record_server(deployment, result, revision=revision, mask=mask, now=now)
    failed = [r for r in results if r.error is not None and not r.cancelled]
    if failed:
        names = dict(
            Server.objects.filter(pk__in=[r.server_id for r in failed]).values_list("pk", "name")
        )
        error = mask(
            "; ".join(
                f"{names.get(r.server_id, r.server_id)}: "
                + (
                    str(r.error)
                    if r.error is not None and r.error.user_facing
                    else "Internal error"
                )
                + (" (rolled back)" if r.rolled_back else "")
                for r in failed
            )
        )
        code = failed[0].error.code if failed[0].error else "error"
        deployment_finish(
            deployment, status=Status.FAILED, error=error[:ERROR_CHARS], error_code=code
        )
    elif any(r.cancelled or r.rolled_back for r in results):
        reason = next(
            (r.reason for r in results if r.cancelled and r.reason), "Cancelled on request"
        )
        deployment_finish(
            deployment, status=Status.CANCELLED, error=mask(reason), error_code="cancelled"
        )
    else:
        deployment_finish(deployment, status=Status.SUCCEEDED)


@retrying
def _record_server(
    deployment: Deployment,
    result: pipeline.ServerResult,
    *,
    revision: str | None,
    mask: Masker,
    now: datetime,
) -> None:
    # The lock order (deployer.db): the project, the server, then its target and releases.
    project_lock(deployment.project_id)
    list(Server.objects.select_for_update().filter(pk=result.server_id))
    target = DeploymentTarget.objects.get(deployment=deployment, server_id=result.server_id)
    if result.ok:
        target.status = TargetStatus.SUCCEEDED
        if result.release:
            mark_live(deployment, result, revision)
    elif result.switched and result.release and not result.rolled_back:
        # Failed after its switch: `current` points at the new release, so it is live.
        target.status = TargetStatus.FAILED
        mark_live(deployment, result, revision)
    elif result.rolled_back:
        target.status = TargetStatus.ROLLED_BACK
    elif result.skipped:
        target.status = TargetStatus.SKIPPED
    elif result.cancelled:
        target.status = TargetStatus.CANCELLED
    else:
        target.status = TargetStatus.FAILED
    target.release = result.release or ""
    target.previous_release = result.previous_release or ""
    if result.error is not None and not result.error.user_facing:
        target.reason = "Internal error"
    else:
        target.reason = mask(result.reason or str(result.error or ""))[:2000]
    target.finished_at = now
    target.save()
    if result.removed_releases:
        Release.objects.filter(server_id=result.server_id, name__in=result.removed_releases).update(
            removed_at=now, live=False
        )


@retrying
def _update_deployment(deployment_id: int, **fields: Any) -> None:
    Deployment.objects.filter(pk=deployment_id).update(**fields)


@retrying
def _create_step(deployment_id: int, server_id: int | None, name: str) -> Step:
    return Step.objects.create(deployment_id=deployment_id, server_id=server_id, name=name)


@retrying
def _update_step(step_id: int, **fields: Any) -> None:
    Step.objects.filter(pk=step_id).update(**fields)


@retrying
def _update_target(deployment_id: int, server_id: int, **fields: Any) -> None:
    DeploymentTarget.objects.filter(deployment_id=deployment_id, server_id=server_id).update(
        **fields
    )


def mark_live(deployment: Deployment, result: pipeline.ServerResult, revision: str | None) -> None:
    """Record ``result.release`` as the server's live release. A deployment pushes it onto
    the server's history (its ``previous`` is what was live); a rollback leaves the history
    as it is, so the next plain rollback goes further back (services.rollback_target)."""
    server_id = result.server_id
    now = timezone.now()
    was_live = Release.objects.filter(server_id=server_id, live=True).first()
    Release.objects.filter(server_id=server_id, live=True).update(live=False)
    if deployment.kind == Kind.ROLLBACK:
        Release.objects.filter(server_id=server_id, name=result.release).update(
            live=True, went_live_at=now
        )
        return
    manifest: object = (
        EncodedJSON(result.manifest.to_json().decode("ascii"))
        if result.manifest is not None
        else {}
    )
    previous = was_live if was_live is not None and was_live.name != result.release else None
    Release.objects.update_or_create(
        server_id=server_id,
        name=result.release,
        defaults={
            "revision": revision or "",
            "branch": deployment.branch,
            "deployment": deployment,
            "manifest": manifest,
            "live": True,
            "removed_at": None,
            "previous": previous,
            "went_live_at": now,
        },
    )
