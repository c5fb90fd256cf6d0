"""Helpers to drive the plain-Python engine in tests (no database)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from builds.engine import pipeline
from builds.engine.build import BuildSpec
from builds.engine.errors import Cancelled


class RecordingReporter:
    """Keeps every log line, step and progress report; can cancel on demand."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, int | None]] = []
        self.steps: list[tuple[str, int | None, str]] = []
        self.progress_reports: list[tuple[int, int, int, int, int]] = []
        self.cancel = threading.Event()
        self.on_progress: Callable[[int, int, int], None] | None = None
        self.states: list[tuple[int, str, str]] = []
        self.revisions: list[str] = []
        # Canary promotion: the test sets `promote` and then `decided`.
        self.waiting = threading.Event()
        self.decided = threading.Event()
        self.promote = False
        self._lock = threading.Lock()

    def log(self, stream: str, text: str, server: int | None = None) -> None:
        with self._lock:
            self.lines.append((stream, text, server))

    @contextlib.contextmanager
    def step(self, name: str, server: int | None = None) -> Iterator[None]:
        try:
            yield
        except BaseException:
            self.steps.append((name, server, "failed"))
            raise
        self.steps.append((name, server, "succeeded"))

    def progress(
        self, server: int, files_done: int, files_total: int, bytes_done: int, bytes_total: int
    ) -> None:
        self.progress_reports.append((server, files_done, files_total, bytes_done, bytes_total))
        if self.on_progress is not None:
            self.on_progress(server, bytes_done, bytes_total)

    def thread_finished(self) -> None:
        pass

    def target_state(self, server: int, state: str, reason: str = "") -> None:
        self.states.append((server, state, reason))

    def revision_resolved(self, sha: str) -> None:
        self.revisions.append(sha)

    def wait_for_promotion(self) -> bool:
        self.waiting.set()
        self.decided.wait(timeout=120)
        return self.promote

    def check_cancelled(self) -> None:
        if self.cancel.is_set():
            raise Cancelled("Cancelled on request")

    @property
    def text(self) -> str:
        return "\n".join(text for _, text, _ in self.lines)


def tree_digest(root: Path, *, ignore: tuple[str, ...] = ()) -> dict[str, str]:
    """path -> kind:mode:sha256 (or link target) for everything under root, not following links."""
    found: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            full = Path(folder) / name
            relative = full.relative_to(root).as_posix()
            if relative.split("/")[0] in ignore:
                continue
            status = full.lstat()
            if full.is_symlink():
                found[relative] = "link:" + os.readlink(full)
            elif full.is_dir():
                found[relative] = f"dir:{status.st_mode & 0o7777:o}"
            else:
                digest = hashlib.sha256(full.read_bytes()).hexdigest()
                found[relative] = f"file:{status.st_mode & 0o7777:o}:{digest}"
    return found


def server_for(target, server_id: int = 1, **overrides) -> pipeline.ServerSpec:
    spec = pipeline.ServerSpec(
        id=server_id,
        name=f"web{server_id}",
        endpoint=target.endpoint(),
        deploy_path=str(target.deploy_path),
    )
    return dataclasses.replace(spec, **overrides)


def after(result: pipeline.DeployResult, spec: pipeline.ServerSpec) -> pipeline.ServerSpec:
    """The server spec as the database would hold it after ``result`` went live."""
    outcome = next(r for r in result.servers if r.server_id == spec.id)
    assert outcome.ok, outcome.error
    return dataclasses.replace(
        spec,
        live_release=outcome.release,
        live_revision=result.revision,
        live_manifest=outcome.manifest,
    )


def deploy_spec(
    repo, tmp_path: Path, servers, revision: str = "main", **overrides
) -> pipeline.DeploySpec:
    build_overrides = overrides.pop("build", {})
    build = BuildSpec(
        repository_url=repo.url,
        mirror_dir=tmp_path / "mirror.git",
        workspace_dir=tmp_path / "workspace",
        cache_dir=tmp_path / "cache",
        revision=revision,
        allow_local=True,
        **build_overrides,
    )
    return pipeline.DeploySpec(
        deployment_id=overrides.pop("deployment_id", 1),
        project="Shop",
        build=build,
        servers=tuple(servers),
        branch="main",
        deployer="alice",
        **overrides,
    )
