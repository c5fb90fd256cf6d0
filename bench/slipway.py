"""Slipway's side of the bench: deployments through the embedded worker, as a user runs them,
and where their time goes.

Import this module only after ``bench.environment.configure`` (Django's models need a configured app registry).
The figures come from what the deployment records (created, started, finished, each engine
step's row, each target's byte counters); two phases that the engine folds into a larger step
(the manifest inside "build", finishing the release inside "upload") are timed by wrapping
the two functions for the length of the bench (``PhaseClock``): the engine itself is unchanged.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from django.contrib.auth.models import User

from builds import services
from builds.engine import release
from builds.engine.manifest import Manifest
from builds.engine.pipeline import mirror_lock, open_mirror
from builds.models import FINAL, Deployment, Kind
from builds.runner import build_spec
from deployer.embedded import start_worker
from projects.models import Project
from projects.services import project_create
from servers.models import GroupMember, Server, ServerGroup
from tests.support.sshd import SSHTarget

#: Time in which no step ran on any server (the runner's own work: loading the spec and the
#: live manifests, saving results), so that nothing measured goes unshown.
BETWEEN = "between steps"
#: The breakdown's columns, in the order a deployment goes through them. Per-server phases
#: (connect to switch) are the slowest server's; the others happen once per deployment.
PHASES = (
    "queue",
    "fetch",
    "checkout",
    "build",
    "manifest",
    "connect",
    "prepare",
    "transfer",
    "finish",
    "switch",
    "record",
    BETWEEN,
)
#: PhaseClock's label for RemoteLayout.finish(then_switch=True): the finish and the switch
#: in one trip, timed whole (the switch step holds it).
FINISH_AND_SWITCH = "finish+switch"
SERVER_PHASES = frozenset({"connect", "prepare", "transfer", "finish", "switch"})
#: The engine's step names (builds/engine/pipeline.py, rollout.py) and the phase each is.
STEP_PHASES = {
    "fetch": "fetch",
    "checkout": "checkout",
    "build": "build",
    "connect": "connect",
    "transfer": "prepare",  # lock + prepare the new release, and the change set
    "lock": "prepare",  # a rollback's lock and check of the kept release
    "prepare": "prepare",  # lock + prepare, started while the build runs
    "upload": "transfer",  # the tar stream, then finish (split out by PhaseClock)
    "switch": "switch",
    "clean up": "switch",
}
POLL_SECONDS = 0.02


@dataclass
class Measurement:
    """One deployment: ``seconds`` from queued to succeeded; ``phases`` in seconds (see
    PHASES; steps the engine reports under a name the bench does not know go to "other");
    ``bytes_sent`` and ``files_sent`` are file content the deployment sent, all servers."""

    seconds: float
    phases: dict[str, float] = field(default_factory=dict)
    bytes_sent: int = 0
    files_sent: int = 0


class PhaseClock:
    """Times calls of a few engine functions while installed, keyed by a label the wrapper
    picks (the deploy path for per-server work). Thread-safe: servers run in threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seconds: dict[tuple[str, str], float] = defaultdict(float)
        self.missing: list[str] = []

    def reset(self) -> None:
        with self._lock:
            self._seconds.clear()

    def seconds(self, phase: str, key: str = "") -> float:
        with self._lock:
            return self._seconds.get((phase, key), 0.0)

    def _add(self, phase: str, key: str, seconds: float) -> None:
        with self._lock:
            self._seconds[phase, key] += seconds

    @contextlib.contextmanager
    def installed(self) -> Iterator[PhaseClock]:
        """Wrap Manifest.build ("manifest") and RemoteLayout.finish ("finish", by deploy
        path) until the block ends; a function the engine no longer has is listed in
        ``missing`` and its phase stays inside its step."""
        with contextlib.ExitStack() as stack:
            stack.enter_context(self._wrapped(Manifest, "build", "manifest", lambda _: ""))
            stack.enter_context(
                self._wrapped(
                    release.RemoteLayout,
                    "finish",
                    "finish",
                    lambda a: str(a[0].deploy_path),
                    # Finishing and switching in one trip (nothing to run before the switch):
                    # inside the switch step, not the upload.
                    phase_of=lambda k: FINISH_AND_SWITCH if k.get("then_switch") else "finish",
                )
            )
            yield self

    @contextlib.contextmanager
    def _wrapped(
        self,
        owner: type,
        name: str,
        phase: str,
        key: Callable[[tuple[Any, ...]], str],
        phase_of: Callable[[dict[str, Any]], str] | None = None,
    ) -> Iterator[None]:
        original = owner.__dict__.get(name)
        if original is None:
            self.missing.append(f"{owner.__name__}.{name}")
            yield
            return
        is_classmethod = isinstance(original, classmethod)
        function = original.__func__ if is_classmethod else original

        def timed(*arguments: Any, **keywords: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*arguments, **keywords)
            finally:
                label = phase_of(keywords) if phase_of is not None else phase
                self._add(label, key(arguments), time.perf_counter() - started)

        setattr(owner, name, classmethod(timed) if is_classmethod else timed)
        try:
            yield
        finally:
            setattr(owner, name, original)


class SlipwayBench:
    """One project on the given repository, deployed by the embedded worker of this process."""

    def __init__(self, repository: Path, workspace: Path) -> None:
        self.project: Project = project_create(
            owner=User.objects.create_user(f"bench-{time.monotonic_ns()}"),
            name="Bench",
            repository_url=repository.as_uri(),
            branch="main",
        )
        self.clock = PhaseClock()
        self._installed = contextlib.ExitStack()
        self._installed.enter_context(self.clock.installed())
        self.worker = start_worker()
        # Fetching from the Git host is the network's cost, and the baselines are handed a
        # tree: every measured deployment fetches from a warm mirror.
        spec = build_spec(Deployment(project=self.project), workspace, "main")
        with mirror_lock(spec):
            open_mirror(spec).fetch()

    def stop(self) -> None:
        """Stop the worker and give the engine its own functions back."""
        self.worker.stop()
        self._installed.close()

    def servers(self, targets: Sequence[SSHTarget], prefix: str) -> list[Server]:
        """A Server row per target (host key pinned), the project's key authorized on it."""
        rows = []
        for n, target in enumerate(targets):
            target.authorize(self.project.public_key)
            rows.append(
                Server.objects.create(
                    project=self.project,
                    name=f"{prefix}-{n}",
                    hostname="127.0.0.1",
                    port=target.port,
                    username=target.username,
                    deploy_path=str(target.deploy_path),
                    host_key_fingerprint=target.host_key_fingerprint,
                )
            )
        return rows

    def group(self, servers: Sequence[Server], *, max_parallel: int) -> ServerGroup:
        """A parallel group of ``servers`` working on ``max_parallel`` of them at once."""
        group = ServerGroup.objects.create(
            project=self.project,
            name=f"parallel-{max_parallel}-{time.monotonic_ns()}",
            strategy="parallel",
            max_parallel=max_parallel,
        )
        for position, server in enumerate(servers):
            GroupMember.objects.create(group=group, server=server, position=position)
        return group

    def deploy(self, servers: Sequence[Server], **arguments: Any) -> Measurement:
        """Queue a deployment (services.deployment_create's arguments), wait for it and
        measure it. Raises SystemExit naming the deployment when it does not succeed."""
        self.clock.reset()
        deployment = services.deployment_create(project=self.project, servers=servers, **arguments)
        while deployment.status not in FINAL:
            time.sleep(POLL_SECONDS)
            deployment.refresh_from_db()
        if deployment.status != "succeeded":
            raise SystemExit(f"deployment #{deployment.pk} {deployment.status}: {deployment.error}")
        return self._measured(deployment, servers)

    def rollback(self, servers: Sequence[Server]) -> Measurement:
        return self.deploy(servers, kind=Kind.ROLLBACK)

    def _measured(self, deployment: Deployment, servers: Sequence[Server]) -> Measurement:
        assert deployment.started_at is not None and deployment.finished_at is not None
        paths = {server.pk: server.deploy_path for server in servers}
        worker: dict[str, float] = defaultdict(float)
        per_server: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        last_step = deployment.started_at
        covered = [(deployment.created_at, deployment.started_at)]
        for step in deployment.steps.all():
            if step.finished_at is None:
                continue
            last_step = max(last_step, step.finished_at)
            covered.append((step.started_at, step.finished_at))
            phase = STEP_PHASES.get(step.name, "other")
            seconds = (step.finished_at - step.started_at).total_seconds()
            if step.server_id is None:
                worker[phase] += seconds
            else:
                per_server[step.server_id][phase] += seconds
        manifest = self.clock.seconds("manifest")
        if manifest:
            worker["manifest"] = manifest
            worker["build"] = max(0.0, worker["build"] - manifest)
        for server_id, phases in per_server.items():
            path = paths.get(server_id, "")
            finish = self.clock.seconds("finish", path)
            if finish and "transfer" in phases:
                phases["finish"] = finish
                phases["transfer"] = max(0.0, phases["transfer"] - finish)
            # One trip finished the release and switched it: counted as finishing, all of it.
            folded = self.clock.seconds(FINISH_AND_SWITCH, path)
            if folded and "switch" in phases:
                phases["finish"] = phases.get("finish", 0.0) + folded
                phases["switch"] = max(0.0, phases["switch"] - folded)
        worker["queue"] = (deployment.started_at - deployment.created_at).total_seconds()
        worker["record"] = (deployment.finished_at - last_step).total_seconds()
        covered.append((last_step, deployment.finished_at))
        total = (deployment.finished_at - deployment.created_at).total_seconds()
        worker[BETWEEN] = max(0.0, total - _union_seconds(covered))
        for phases in per_server.values():
            for phase, seconds in phases.items():
                worker[phase] = max(worker.get(phase, 0.0), seconds)
        targets = list(deployment.targets.all())
        return Measurement(
            seconds=total,
            phases=dict(worker),
            bytes_sent=sum(t.bytes_total for t in targets),
            files_sent=sum(t.files_total for t in targets),
        )


def _union_seconds(intervals: list[tuple[datetime, datetime]]) -> float:
    """How long at least one of the (start, end) intervals lasts, in seconds."""
    total = 0.0
    reach: datetime | None = None
    for start, end in sorted(intervals):
        if reach is not None and start < reach:
            start = reach
        if end > start:
            total += (end - start).total_seconds()
            reach = end if reach is None else max(reach, end)
    return total
