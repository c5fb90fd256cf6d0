"""docs/benchmarks.md and its plots, from one run's figures."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

# Files only: no display on a server or in CI. Chosen before pyplot is imported.
matplotlib.use("Agg")

import matplotlib.pyplot as plt

from bench.growth import Point
from bench.slipway import PHASES, Measurement

#: The comparison's columns: Slipway, then the baselines, as the table names them.
TOOLS = {
    "slipway": "Slipway",
    "rsync-tree": "rsync, work tree",
    "rsync-export": "rsync, fresh export",
    "tar": "tar over ssh",
    "ssh-switch": "bare ssh switch",
    "linked": "hard-linked release (floor)",
}
#: A floor's name in a sentence.
FLOOR_NAMES = {"linked": "a hard-linked release"}


#: The growth curves' goals (issue 12): 50 servers against 1, the incremental deploy at
#: 100,000 files against 1,000, and the worker's peak memory at 100,000 files.
SERVERS_GOAL = 4.0
FILES_GOAL = 2.0
RSS_GOAL_MB = 300.0


@dataclass
class Scenario:
    """One row of the comparison: every run's seconds per tool, Slipway's measurements, the
    tool the goal compares Slipway with and the goal's ratio (None: the goal is in bytes)."""

    label: str
    goal: str
    versus: str
    limit: float | None
    #: The tool whose time is the floor of the goal's ratio on this machine, if measured.
    floor: str = ""
    runs: dict[str, list[float]] = field(default_factory=dict)
    slipway: list[Measurement] = field(default_factory=list)

    def add(self, tool: str, seconds: float) -> None:
        self.runs.setdefault(tool, []).append(seconds)

    def measured(self, measurement: Measurement) -> None:
        self.slipway.append(measurement)
        self.add("slipway", measurement.seconds)

    def median(self, tool: str) -> float:
        return statistics.median(self.runs[tool])

    def verdict(self) -> str:
        if self.limit is None:
            sent = max(m.bytes_sent for m in self.slipway)
            return f"{sent:,} bytes sent: " + ("met" if sent == 0 else "not met")
        ratio = self.median("slipway") / self.median(self.versus)
        verdict = f"{ratio:.2f}x {TOOLS[self.versus]}: " + (
            "met" if ratio <= self.limit else "not met"
        )
        if self.floor and self.runs.get(self.floor):
            floor = self.median(self.floor) / self.median(self.versus)
            verdict += f" (the floor, {FLOOR_NAMES.get(self.floor, self.floor)}: {floor:.2f}x)"
        return verdict

    def phases(self) -> dict[str, float]:
        """Each phase's median over the runs (0 where a run had no such phase)."""
        names = [p for p in PHASES if any(p in m.phases for m in self.slipway)]
        names += sorted({p for m in self.slipway for p in m.phases} - set(PHASES))
        return {n: statistics.median(m.phases.get(n, 0.0) for m in self.slipway) for n in names}


@dataclass
class Setting:
    """What the run was: for the header."""

    quick: bool
    date: str
    commit: str
    repeat: int
    files: int
    size: int
    binaries: int
    filesystem: str
    user: str
    cores: int | None
    load: tuple[float, float, float]
    python: str
    platform: str
    growth_repeat: int
    curve_files: int
    #: Engine functions the PhaseClock did not find: their phase stayed inside its step.
    unsplit: tuple[str, ...] = ()
    #: Growth runs whose child process failed (see stderr of the run).
    failed: tuple[str, ...] = ()


def _cell(values: Sequence[float]) -> str:
    if not values:
        return "-"
    median = statistics.median(values)
    if len(values) == 1:
        return f"{median:.2f} s"
    return f"{median:.2f} s ({min(values):.2f}-{max(values):.2f})"


def render(
    setting: Setting, scenarios: Sequence[Scenario], points: Sequence[Point], plots: dict[str, str]
) -> str:
    """The page; ``plots`` maps a plot's title to its path relative to the page."""
    lines = ["# Benchmarks", ""]
    if setting.quick:
        lines += [
            f"> **Quick run** (`python -m bench.run --quick`) on {setting.date}, commit "
            f"`{setting.commit}`, on a loaded machine (load average "
            f"{' / '.join(f'{v:.1f}' for v in setting.load)}): small trees, few servers, "
            f"{_plural(setting.repeat, 'round')}. It shows the page's structure, not figures to quote; "
            "`make bench` replaces it.",
            "",
        ]
    lines += [
        "Webhook deliveries have a benchmark of their own: `make bench-webhooks`, figures in "
        "[benchmarks-webhooks.md](benchmarks-webhooks.md).",
        "",
        f"Produced by `make bench` (bench/run.py) on {setting.date}, commit `{setting.commit}`; "
        f"each cell is the median of {_plural(setting.repeat, 'run')}, the fastest and slowest in "
        "brackets, all measured in the same run on the same machine.",
        "",
        f"- Tree: {setting.files:,} files, {setting.size / 1e6:.1f} MB (small text files"
        + (f" and {setting.binaries} binaries of 1-5 MB" if setting.binaries else "")
        + "); the incremental change is 10 modified, 5 added and 5 deleted files.",
        f"- Targets: 3 OpenSSH sshd on 127.0.0.1, deploy directories on {setting.filesystem}; "
        f"login user `{setting.user}`.",
        f"- Machine: {setting.cores} cores, load average at the end "
        f"{' / '.join(f'{v:.1f}' for v in setting.load)}, Python {setting.python}, "
        f"{setting.platform}.",
        "- Slipway: the deployment's recorded duration, queued to succeeded, through the "
        "embedded worker: fetch (warm mirror), checkout, build, manifest, transfer, switch and "
        "recording included.",
        "- rsync, work tree: what a user with a deploy script runs. A persistent clone updated "
        "in place by `git checkout` (unchanged files keep their mtimes), then "
        "`rsync -a --delete --link-dest=<previous release>` into a new release and a symlink "
        "switch (`ln -sfn` + `mv -T`).",
        "- rsync, fresh export: the same rsync from a new `git archive` export each time: "
        "every mtime changes, so rsync reads and checksums every file (its worst case; the "
        "figure earlier versions of this page compared with).",
        "- tar over ssh: `tar -c | ssh 'tar -x && ln -sfn … && mv -T …'` from the work tree "
        "into a new release.",
        "- Bare ssh switch: `ssh host 'ln -sfn releases/<kept> .current.tmp && mv -T "
        ".current.tmp current'`.",
        "- Hard-linked release (floor): the least any tool that deploys into a new release "
        "directory can do for the incremental change, knowing it from `git diff` for free: "
        "one ssh running `cp -al releases/<previous> releases/<new>` (what `--link-dest` "
        "builds), `rm` of the changed and deleted files, `tar -x` of the changed ones from a "
        "`tar -c` of the work tree, and the switch. Nothing is compared, hashed or recorded; "
        "the copy alone is a directory entry per file on the server.",
        "- Every baseline runs for the 3 servers at once, as Slipway does.",
        "",
        "## Slipway against the baselines",
        "",
        "| scenario | " + " | ".join(TOOLS.values()) + " | goal | result |",
        "| --- | " + " | ".join("---:" for _ in TOOLS) + " | --- | --- |",
    ]
    for scenario in scenarios:
        cells = [_cell(scenario.runs.get(tool, [])) for tool in TOOLS]
        lines.append(
            f"| {scenario.label} | "
            + " | ".join(cells)
            + f" | {scenario.goal} | {scenario.verdict()} |"
        )
    lines += [
        "",
        "File content Slipway sent (all 3 servers, median): "
        + "; ".join(
            f"{s.label}: {statistics.median(m.bytes_sent for m in s.slipway):,.0f} bytes in "
            f"{statistics.median(m.files_sent for m in s.slipway):,.0f} files"
            for s in scenarios
        )
        + ".",
        "",
        "## Where Slipway's time goes",
        "",
        "Seconds per phase, median of the runs. Queue: created to claimed by the worker. "
        "Fetch, checkout, build: the engine's steps (build without the manifest). Manifest: "
        "hashing the build's output. Connect, prepare (lock and start the new release; a "
        "rollback's lock and check), transfer (deletions and the tar stream), finish (config "
        "files, manifest, shared links, permissions, listing; with nothing to run before the "
        "switch, the same trip also switches, and all of it counts here), switch (switch, "
        "clean-up, unlock): per server, the slowest server's. Record: the last step's end to the "
        "deployment's. Between steps: time in which no step ran anywhere (the runner's own "
        "work). Phases overlap only across servers, so a row adds up to about its total.",
        "",
    ]
    if setting.unsplit:
        lines += [
            "Not split out in this run (the engine no longer has "
            + ", ".join(f"`{name}`" for name in setting.unsplit)
            + "): that phase is counted in the step around it.",
            "",
        ]
    names = list(PHASES) + sorted({p for s in scenarios for p in s.phases()} - set(PHASES))
    lines += [
        "| scenario | total | " + " | ".join(names) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in names) + " |",
    ]
    for scenario in scenarios:
        phases = scenario.phases()
        lines.append(
            f"| {scenario.label} | {scenario.median('slipway'):.2f} | "
            + " | ".join(f"{phases[n]:.2f}" if n in phases else "-" for n in names)
            + " |"
        )
    if "breakdown" in plots:
        lines += ["", f"![Where the time goes]({plots['breakdown']})"]
    lines += [
        "",
        "## Cost as the work grows",
        "",
        "Each point is a child process that is the worker (embedded, like `make run`): a first "
        "deploy to empty servers, then an incremental one (10 modified, 5 added, 5 deleted), "
        f"the median of {_plural(setting.growth_repeat, 'run')}. Peak RSS: "
        "the worker process's VmHWM, reset before each deploy (Django and Celery included). "
        f"The files curve deploys to 1 server; the servers curve deploys {setting.curve_files:,} "
        "files with the default parallel strategy (5 servers at a time). The baselines run in "
        "the same child, on the same tree and servers, all servers at once, one ssh each: tar "
        "over ssh, `tar -c | ssh 'tar -x'` (OpenSSH) of the whole tree, the physical floor of a "
        "first deploy on this machine (the servers' sshd, tar and file system share its cores "
        "with the worker); rsync, work tree, `rsync -a --delete --link-dest` of the incremental "
        "change from the work tree, rsync's best case, which also reads every file's metadata "
        "on both sides; hard-linked release (floor), the incremental change as the comparison's "
        "floor makes it (`cp -al` of the previous release, the change, the switch).",
        "",
        "| files | servers | first deploy | peak RSS | tar over ssh | incremental | peak RSS | "
        "incremental: bytes sent | rsync, work tree | hard-linked release (floor) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    if not points:
        lines.append("| not measured in this run | | | | | | | | | |")
    for point in points:
        lines.append(
            f"| {point.files:,} | {point.servers} | {point.first.seconds:.2f} s | "
            f"{_mb(point.first.peak_rss_mb)} | {_seconds(point.tar_first)} | "
            f"{point.incremental.seconds:.2f} s | {_mb(point.incremental.peak_rss_mb)} | "
            f"{point.incremental.bytes_sent:,} | {_seconds(point.rsync_incremental)} | "
            f"{_seconds(point.linked_incremental)} |"
        )
    if setting.failed:
        failed = "; ".join(setting.failed)
        lines += ["", f"Failed runs, left out (their output is in the run's stderr): {failed}."]
    lines += ["", *curve_goals(points), *_curve_phases(points)]
    for title in ("files", "servers"):
        if title in plots:
            lines += ["", f"![Cost against {title}]({plots[title]})"]
    lines += [
        "",
        "## Reproduce",
        "",
        "`make bench` (all of it; the growth curves up to 100,000 files and 50 servers take a "
        "while), or `make bench BENCH_ARGS=--quick` (`python -m bench.run --quick`: small "
        "trees, few servers, 2 rounds, a couple of minutes). It needs root for the tmpfs mount "
        "and the `slipway-bench` deploy user; without root it falls back to /dev/shm and the "
        "current user.",
    ]
    return "\n".join(lines) + "\n"


def curve_goals(points: Sequence[Point]) -> list[str]:
    """The curves' goals (issue 12) as list items, each with its figure and verdict; a goal
    this run has no points for is left out."""
    items = []
    servers = _servers_curve(points)
    if len(servers) > 1:
        one, most = servers[0], servers[-1]
        for pick in ("first", "incremental"):
            ratio = getattr(most, pick).seconds / getattr(one, pick).seconds
            items.append(
                f"- {most.servers} servers ≤ {SERVERS_GOAL:g}x the time of {one.servers} "
                f"({pick.replace('first', 'first deploy')}): {ratio:.2f}x, {_met(ratio <= SERVERS_GOAL)}"
            )
        if one.tar_first and most.tar_first:
            items.append(
                f"  - the floor on this machine: tar over ssh to {most.servers} servers at once "
                f"takes {most.tar_first / one.tar_first:.2f}x its time to {one.servers} "
                f"({most.tar_first:.2f} s against {one.tar_first:.2f} s)"
            )
    files = sorted((p for p in points if p.servers == 1), key=lambda p: p.files)
    if len(files) > 1:
        smallest, largest = files[0], files[-1]
        ratio = largest.incremental.seconds / smallest.incremental.seconds
        items.append(
            f"- incremental at {largest.files:,} files ≤ {FILES_GOAL:g}x the one at "
            f"{smallest.files:,}: {ratio:.2f}x, {_met(ratio <= FILES_GOAL)}"
        )
        if smallest.rsync_incremental and largest.rsync_incremental:
            items.append(
                f"  - rsync from a work tree, on the same change: "
                f"{largest.rsync_incremental / smallest.rsync_incremental:.2f}x "
                f"({largest.rsync_incremental:.2f} s against {smallest.rsync_incremental:.2f} s)"
            )
        if smallest.linked_incremental and largest.linked_incremental:
            items.append(
                "  - the floor of any deploy into a new release directory (a hard-linked "
                f"release: `cp -al`, the change, the switch): "
                f"{largest.linked_incremental / smallest.linked_incremental:.2f}x "
                f"({largest.linked_incremental:.2f} s against {smallest.linked_incremental:.2f} s)"
            )
        peaks = [d.peak_rss_mb for d in (largest.first, largest.incremental)]
        if all(peak is not None for peak in peaks):
            peak = max(p for p in peaks if p is not None)
            items.append(
                f"- worker peak RSS at {largest.files:,} files ≤ {RSS_GOAL_MB:g} MB: "
                f"{peak:.0f} MB, {_met(peak <= RSS_GOAL_MB)}"
            )
    return ["Goals:", "", *items] if items else []


def _curve_phases(points: Sequence[Point]) -> list[str]:
    """Each point's deploys broken down per phase, as the comparison's are."""
    if not points:
        return []
    deploys = [(p, kind, getattr(p, kind)) for p in points for kind in ("first", "incremental")]
    names = list(PHASES) + sorted({n for _, _, d in deploys for n in d.phases} - set(PHASES))
    lines = [
        "",
        "Where the time goes on the curves (seconds; the phases above). With more servers "
        "than run at once, servers go 5 at a time and each per-server phase is the slowest "
        "single server's, so such a row adds up to less than its total.",
        "",
        "| files | servers | deploy | total | " + " | ".join(names) + " |",
        "| ---: | ---: | --- | ---: | " + " | ".join("---:" for _ in names) + " |",
    ]
    for point, kind, deploy in deploys:
        lines.append(
            f"| {point.files:,} | {point.servers} | {kind} | {deploy.seconds:.2f} | "
            + " | ".join(f"{deploy.phases[n]:.2f}" if n in deploy.phases else "-" for n in names)
            + " |"
        )
    return lines


def _met(met: bool) -> str:
    return "met" if met else "not met"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} MB"


def plot_growth(points: Sequence[Point], folder: Path) -> dict[str, Path]:
    """One PNG per curve (time and peak RSS against files, and against servers)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, axis, chosen in (
        ("files", "files in the tree (1 server)", [p for p in points if p.servers == 1]),
        ("servers", "servers", _servers_curve(points)),
    ):
        if len(chosen) < 2:
            continue
        xs = [p.files if name == "files" else p.servers for p in chosen]
        figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(10, 4))
        for label, pick in (("first deploy", "first"), ("incremental", "incremental")):
            deploys = [getattr(p, pick) for p in chosen]
            time_axis.plot(xs, [d.seconds for d in deploys], marker="o", label=label)
            memory_axis.plot(xs, [d.peak_rss_mb or 0.0 for d in deploys], marker="o", label=label)
        for label, floors in (
            ("tar over ssh (first)", [p.tar_first for p in chosen]),
            ("rsync, work tree (incremental)", [p.rsync_incremental for p in chosen]),
            ("hard-linked release floor (incremental)", [p.linked_incremental for p in chosen]),
        ):
            if all(floor is not None for floor in floors):
                time_axis.plot(xs, floors, marker="o", linestyle=":", label=label)
        if name == "files":
            memory_axis.axhline(RSS_GOAL_MB, linestyle="--", color="grey", label="goal")
        for axes, ylabel in ((time_axis, "seconds"), (memory_axis, "worker peak RSS (MB)")):
            axes.set_xscale("log")
            axes.set_xticks(xs, [f"{x:,}" for x in xs])
            axes.minorticks_off()
            axes.set_xlabel(axis)
            axes.set_ylabel(ylabel)
            axes.set_ylim(bottom=0)
            axes.grid(True, alpha=0.3)
            axes.legend()
        figure.tight_layout()
        path = folder / f"{name}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written[name] = path
    return written


def _servers_curve(points: Sequence[Point]) -> list[Point]:
    """The points that share one tree size and differ in servers (the servers curve)."""
    by_files: dict[int, list[Point]] = {}
    for point in points:
        by_files.setdefault(point.files, []).append(point)
    longest = max(by_files.values(), key=len, default=[])
    return sorted(longest, key=lambda p: p.servers)


def plot_breakdown(scenarios: Sequence[Scenario], folder: Path) -> Path:
    """A stacked bar per scenario: Slipway's median seconds per phase."""
    folder.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(10, 0.6 * len(scenarios) + 1.6))
    names = list(PHASES) + sorted({p for s in scenarios for p in s.phases()} - set(PHASES))
    colours = matplotlib.colormaps["tab20"]
    labels = [s.label for s in scenarios]
    left = [0.0] * len(scenarios)
    for index, name in enumerate(names):
        widths = [s.phases().get(name, 0.0) for s in scenarios]
        axes.barh(labels, widths, left=left, label=name, color=colours(index % 20))
        left = [a + b for a, b in zip(left, widths, strict=True)]
    axes.invert_yaxis()
    axes.set_xlabel("seconds")
    axes.legend(ncol=6, fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.25))
    figure.tight_layout()
    path = folder / "breakdown.png"
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path
