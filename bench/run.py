"""`make bench`: Slipway against the tools a user would otherwise pick, measured in the same
run, where Slipway's time goes, and how its cost grows with the tree and the servers.

Three sshd targets on loopback, deploy directories on tmpfs. Each round (5 by default):
  (a) first deploy of a ~5,000-file / ~60 MB tree to 3 servers,
  (b) an incremental deploy of 10 modified, 5 added and 5 deleted files,
  (c) a rollback to (a)'s release,
  (d) a redeploy of (b)'s revision, whose release is kept on the servers (a roll forward after
      the rollback): the goal is that no file content is sent.
Baselines (bench/fixtures.py): rsync from a persistent work tree updated by `git checkout`,
rsync from a fresh `git archive` export, `tar | ssh tar -x`, and a bare `ssh` symlink switch,
each for the 3 servers at once. Then the growth curves (bench/growth.py), each point in a
child process that is the worker. Writes docs/benchmarks.md and docs/benchmarks/*.png.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from bench import growth
from bench.environment import configure
from bench.fixtures import (
    WorkTree,
    baselines_for,
    bench_user,
    change_repository,
    export,
    filesystem_of,
    head,
    last_change,
    make_keys,
    make_repository,
    parallel,
    release_base,
    start_targets,
    stop_targets,
    tmpfs_base,
    tree_size,
)

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Plan:
    """How much to measure."""

    repeat: int
    text_files: int
    binaries: int
    files_curve: tuple[int, ...]
    servers_curve: tuple[int, ...]
    curve_files: int
    growth_repeat: int


FULL = Plan(
    repeat=5,
    text_files=4990,
    binaries=10,
    files_curve=(1_000, 10_000, 100_000),
    servers_curve=(1, 10, 50),
    curve_files=1_000,
    growth_repeat=3,
)
QUICK = Plan(
    repeat=2,
    text_files=1000,
    binaries=2,
    files_curve=(500, 2_000),
    servers_curve=(1, 3),
    curve_files=500,
    growth_repeat=1,
)
SERVERS = 3


def _commit(outputs: list[Path]) -> str:
    """HEAD's short SHA, and whether the work tree differs from it (the bench's own pages
    and plots, which every run rewrites, aside)."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        [
            *("git", "status", "--porcelain", "--untracked-files=no", "--", "."),
            *(f":(exclude){path}" for path in outputs),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return f"{commit}{' with local changes' if dirty else ''}" or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small trees, few servers, 2 rounds")
    parser.add_argument("--repeat", type=int, help="rounds of the comparison (default 5)")
    parser.add_argument("--no-growth", action="store_true", help="skip the growth curves")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    options = parser.parse_args()
    plan = QUICK if options.quick else FULL
    repeat = options.repeat or plan.repeat

    base = tmpfs_base()
    try:
        configure(base / "slipway-data")
        # Models can only be imported once Django is set up.
        from bench import report
        from bench.slipway import SlipwayBench

        user = bench_user(base / "home")
        repository = base / "repository"
        make_repository(repository, text_files=plan.text_files, binaries=plan.binaries)
        files, size = tree_size(repository)
        work_tree = WorkTree(repository, base / "work-tree")
        exported = base / "export"
        keys = make_keys(base / "keys")
        slipway = SlipwayBench(repository, base / "warm-workspace")
        scenarios = {
            "a": report.Scenario("(a) first deploy, 3 servers", "≤ 1.0x tar over ssh", "tar", 1.0),
            "b": report.Scenario(
                "(b) 10 modified + 5 added + 5 deleted, 3 servers",
                "≤ 0.5x rsync, work tree",
                "rsync-tree",
                0.5,
                floor="linked",
            ),
            "c": report.Scenario(
                "(c) rollback, 3 servers", "≤ 1.5x bare ssh switch", "ssh-switch", 1.5
            ),
            "d": report.Scenario(
                "(d) redeploy of a kept revision, 3 servers", "no file content sent", "", None
            ),
        }
        for round_number in range(repeat):
            print(f"comparison: round {round_number + 1} of {repeat}", file=sys.stderr)
            targets = start_targets(base / f"round{round_number}", SERVERS, user=user, keys=keys)
            try:
                baselines = baselines_for(targets, keys, base / f"known_hosts{round_number}")
                servers = slipway.servers(targets, f"r{round_number}")
                tree = work_tree.path
                for key, previous in (("a", None), ("b", "a")):
                    if key == "b":
                        change_repository(repository, round_number)
                    work_tree.checkout(head(repository))
                    export(repository, exported)
                    scenario = scenarios[key]
                    scenario.measured(slipway.deploy(servers))
                    for tool, source in (("rsync-tree", tree), ("rsync-export", exported)):
                        scenario.add(
                            tool,
                            parallel(
                                [partial(b.rsync, tool, source, key, previous) for b in baselines]
                            ),
                        )
                    scenario.add("tar", parallel([partial(b.tar, tree, key) for b in baselines]))
                    if key == "a":
                        parallel([partial(b.seed_linked, tree, "a") for b in baselines])
                    else:
                        changed, deleted = last_change(repository)
                        scenario.add(
                            "linked",
                            parallel(
                                [
                                    partial(b.linked, tree, "b", "a", changed, deleted)
                                    for b in baselines
                                ]
                            ),
                        )

                scenarios["c"].measured(slipway.rollback(servers))
                scenarios["c"].add(
                    "ssh-switch",
                    parallel([partial(b.switch, "rsync-tree", "a") for b in baselines]),
                )
                # Roll forward: (b)'s revision again; its release is still on every server.
                scenarios["d"].measured(slipway.deploy(servers))
                scenarios["d"].add(
                    "rsync-tree",
                    parallel([partial(b.rsync, "rsync-tree", tree, "d", "a") for b in baselines]),
                )
                scenarios["d"].add("tar", parallel([partial(b.tar, tree, "d") for b in baselines]))
            finally:
                stop_targets(targets)
                # Keep tmpfs small: this round's releases are no longer needed.
                shutil.rmtree(base / f"round{round_number}", ignore_errors=True)
        slipway.stop()

        failures: list[str] = []
        points = (
            []
            if options.no_growth
            else growth.measure(
                base / "growth",
                files_curve=plan.files_curve,
                servers_curve=plan.servers_curve,
                curve_files=plan.curve_files,
                repeat=plan.growth_repeat,
                user=user,
                failures=failures,
            )
        )
        plots_dir = options.output.parent / options.output.stem
        ordered = [scenarios[k] for k in "abcd"]
        written = {"breakdown": report.plot_breakdown(ordered, plots_dir)}
        written.update(report.plot_growth(points, plots_dir))
        setting = report.Setting(
            quick=options.quick,
            date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            commit=_commit([options.output, plots_dir]),
            repeat=repeat,
            files=files,
            size=size,
            binaries=plan.binaries,
            filesystem=filesystem_of(base),
            user=user,
            cores=os.cpu_count(),
            load=os.getloadavg(),
            python=platform.python_version(),
            platform=platform.platform(),
            growth_repeat=plan.growth_repeat,
            curve_files=plan.curve_files,
            unsplit=tuple(slipway.clock.missing),
            failed=tuple(failures),
        )
        page = report.render(
            setting,
            ordered,
            points,
            {k: str(v.relative_to(options.output.parent)) for k, v in written.items()},
        )
        print(page)
        options.output.write_text(page)
        print(f"written to {options.output} and {plots_dir}/", file=sys.stderr)
    finally:
        release_base(base)


if __name__ == "__main__":
    main()
