"""Cost as the work grows: deploy time and the worker's peak memory against the tree's size
and the number of servers.

Each point runs in a child process of its own (``python -m bench.growth <config.json>``): it
starts the sshd targets, sets Django up on a fresh data directory, and runs one first deploy
and one incremental deploy (10 modified, 5 added, 5 deleted files) through its embedded
worker. The child is the worker, so its peak resident set (VmHWM, reset before each deploy)
is the worker's peak memory for that deploy, Django and Celery included.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from bench.environment import configure
from bench.fixtures import (
    baselines_for,
    change_repository,
    last_change,
    make_keys,
    make_repository,
    parallel,
    start_targets,
    stop_targets,
)

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass
class Deploy:
    """One deploy of a growth point: seconds queued to succeeded, its phases, and the worker
    process's peak resident set in MB during it (None where /proc cannot tell)."""

    seconds: float
    phases: dict[str, float]
    bytes_sent: int
    peak_rss_mb: float | None


@dataclass
class Point:
    """One point of a curve, with the baselines measured in the same child on the same tree
    and servers, all servers at once (None where not measured): ``tar_first``, the seconds
    ``tar -c | ssh tar -x`` (OpenSSH) takes to put the whole tree there, what any tool pays
    for the bytes, the encryption and the servers' own work on this machine;
    ``rsync_incremental``, the seconds ``rsync -a --delete --link-dest`` from the work tree
    takes for the incremental change (rsync's best case); ``linked_incremental``, the
    hard-linked release floor (``cp -al`` of the previous release, the change, the switch)."""

    files: int
    servers: int
    first: Deploy
    incremental: Deploy
    tar_first: float | None = None
    rsync_incremental: float | None = None
    #: The seconds of the hard-linked release floor for the incremental change
    #: (fixtures.Baseline.linked): what any release directory costs on the server.
    linked_incremental: float | None = None


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False if refused."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float | None:
    """This process's peak resident set since start or the last reset, in MB (10^6 bytes)."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        return None
    return None


# --------------------------------------------------------------------------- the child


def _child(config_path: Path) -> None:
    config = json.loads(config_path.read_text())
    base = Path(config["base"])
    repository = Path(config["repository"])

    configure(base / "data")
    # Models can only be imported once Django is set up.
    from bench.slipway import SlipwayBench

    keys = make_keys(base / "keys")
    targets = start_targets(base / "targets", config["servers"], user=config["user"], keys=keys)
    bench = SlipwayBench(repository, base / "warm")
    baselines = baselines_for(targets, keys, base / "known_hosts")
    floors: dict[str, float] = {}
    try:
        servers = bench.servers(targets, "growth")
        # Optionally a parallel group working on ``max_parallel`` servers at once (the
        # default, without a group, is 5 at a time).
        arguments = (
            {"group": bench.group(servers, max_parallel=config["max_parallel"])}
            if config.get("max_parallel")
            else {}
        )
        deploys = []
        for change in (False, True):
            if change:
                change_repository(repository, config["round"])
            reset = reset_peak_rss()
            measured = bench.deploy(servers, **arguments)
            deploys.append(
                Deploy(
                    seconds=measured.seconds,
                    phases=measured.phases,
                    bytes_sent=measured.bytes_sent,
                    peak_rss_mb=peak_rss_mb() if reset else None,
                )
            )
            # The baselines, on the same tree and servers, after Slipway's deploy.
            if not change:
                floors["tar_first"] = parallel(
                    [partial(b.tar, repository, "first") for b in baselines]
                )
                parallel([partial(b.rsync, "rsync-tree", repository, "a", None) for b in baselines])
                parallel([partial(b.seed_linked, repository, "a") for b in baselines])
            else:
                floors["rsync_incremental"] = parallel(
                    [partial(b.rsync, "rsync-tree", repository, "b", "a") for b in baselines]
                )
                changed, deleted = last_change(repository)
                floors["linked_incremental"] = parallel(
                    [partial(b.linked, repository, "b", "a", changed, deleted) for b in baselines]
                )
    finally:
        bench.stop()
        stop_targets(targets)
    result = {
        "first": dataclasses.asdict(deploys[0]),
        "incremental": dataclasses.asdict(deploys[1]),
        **floors,
    }
    Path(config["output"]).write_text(json.dumps(result))


# --------------------------------------------------------------------------- the parent


def measure(
    base: Path,
    *,
    files_curve: tuple[int, ...],
    servers_curve: tuple[int, ...],
    curve_files: int,
    repeat: int,
    user: str,
    failures: list[str] | None = None,
) -> list[Point]:
    """Every point of both curves (files at 1 server; servers at ``curve_files`` files), each
    the median of ``repeat`` children. A child that fails costs only its run: it is named in
    ``failures`` (its output went to stderr) and a point with no run left is left out, so a
    long run still ends with a page."""
    wanted = sorted({(f, 1) for f in files_curve} | {(curve_files, s) for s in servers_curve})
    repositories: dict[int, Path] = {}
    rounds = 0
    points = []
    for files, servers in wanted:
        if files not in repositories:
            repositories[files] = base / f"repository-{files}"
            make_repository(repositories[files], text_files=files)
        runs: list[tuple[Deploy, Deploy, dict[str, float]]] = []
        for attempt in range(1, repeat + 1):
            rounds += 1
            folder = base / f"point-{files}-{servers}-{rounds}"
            folder.mkdir(mode=0o755)
            config = {
                "base": str(folder),
                "repository": str(repositories[files]),
                "servers": servers,
                "user": user,
                "round": 1000 + rounds,
                "output": str(folder / "result.json"),
            }
            (folder / "config.json").write_text(json.dumps(config))
            print(
                f"growth: {files} files, {servers} servers, run {attempt} of {repeat}",
                file=sys.stderr,
            )
            child = subprocess.run(
                [sys.executable, "-m", "bench.growth", str(folder / "config.json")],
                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
            )
            if child.returncode == 0:
                result = json.loads((folder / "result.json").read_text())
                runs.append(
                    (
                        Deploy(**result["first"]),
                        Deploy(**result["incremental"]),
                        {
                            name: result[name]
                            for name in ("tar_first", "rsync_incremental", "linked_incremental")
                            if name in result
                        },
                    )
                )
            elif failures is not None:
                failures.append(f"{files:,} files, {servers} servers (exit {child.returncode})")
            shutil.rmtree(folder, ignore_errors=True)
        if runs:
            points.append(
                Point(
                    files,
                    servers,
                    _median([r[0] for r in runs]),
                    _median([r[1] for r in runs]),
                    _median_of([r[2].get("tar_first") for r in runs]),
                    _median_of([r[2].get("rsync_incremental") for r in runs]),
                    _median_of([r[2].get("linked_incremental") for r in runs]),
                )
            )
    for repository in repositories.values():
        shutil.rmtree(repository, ignore_errors=True)
    return points


def _median_of(values: list[float | None]) -> float | None:
    """The median of the values measured (the lower one of an even count); None if none."""
    known = sorted(value for value in values if value is not None)
    return known[(len(known) - 1) // 2] if known else None


def _median(deploys: list[Deploy]) -> Deploy:
    """The run of median duration (its phases and memory belong to the same run)."""
    ordered = sorted(deploys, key=lambda d: d.seconds)
    return ordered[(len(ordered) - 1) // 2]


if __name__ == "__main__":
    _child(Path(sys.argv[1]))
