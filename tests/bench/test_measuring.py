"""How the bench measures Slipway (bench/slipway.py, bench/growth.py, bench/report.py):
the timing wrappers leave the engine's behaviour alone, memory is read from the process
itself, and the page says whether each goal is met. Behaviour only; no timings."""

from __future__ import annotations

import dataclasses
import mmap
from datetime import UTC, datetime, timedelta

from bench.growth import Deploy, Point, peak_rss_mb, reset_peak_rss
from bench.report import Scenario, Setting, curve_goals, render
from bench.slipway import PHASES, Measurement, PhaseClock, _union_seconds
from builds.engine import release
from builds.engine.manifest import Manifest


def test_the_phase_clock_times_the_manifest_without_changing_it_and_restores_the_engine(tmp_path):
    (tmp_path / "a.txt").write_text("a\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("b\n")
    original_build = Manifest.__dict__["build"]
    original_finish = release.RemoteLayout.__dict__["finish"]
    expected = Manifest.build(tmp_path)
    clock = PhaseClock()

    with clock.installed():
        assert Manifest.__dict__["build"] is not original_build
        measured = Manifest.build(tmp_path)

    assert measured.to_json() == expected.to_json()
    assert clock.seconds("manifest") > 0
    assert clock.missing == []
    assert Manifest.__dict__["build"] is original_build
    assert release.RemoteLayout.__dict__["finish"] is original_finish
    clock.reset()
    assert clock.seconds("manifest") == 0


def test_a_function_the_engine_no_longer_has_is_reported_not_fatal():
    class Engine:
        pass

    clock = PhaseClock()
    with clock._wrapped(Engine, "gone", "finish", lambda _: ""):
        pass
    assert clock.missing == ["Engine.gone"]


def test_the_phase_clock_times_a_finish_that_also_switches_under_its_own_label():
    class Engine:
        def finish(self, *, then_switch: bool = False) -> bool:
            return then_switch

    clock = PhaseClock()
    with clock._wrapped(
        Engine,
        "finish",
        "finish",
        lambda _: "/srv/app",
        phase_of=lambda k: "finish+switch" if k.get("then_switch") else "finish",
    ):
        assert Engine().finish() is False
        assert Engine().finish(then_switch=True) is True
    assert clock.seconds("finish", "/srv/app") > 0
    assert clock.seconds("finish+switch", "/srv/app") > 0


def test_the_peak_resident_set_follows_an_allocation_and_can_be_reset():
    assert reset_peak_rss()
    before = peak_rss_mb()
    assert before is not None
    # Fresh pages from the kernel: a bytearray may reuse memory an earlier test freed in the
    # heap, already resident, and leave the resident set where it was.
    ballast = mmap.mmap(-1, 80 * 1024 * 1024)
    for offset in range(0, len(ballast), mmap.PAGESIZE):
        ballast[offset] = 1  # touch every page
    grown = peak_rss_mb()
    assert grown is not None and grown >= before + 70
    ballast.close()
    assert reset_peak_rss()
    after = peak_rss_mb()
    assert after is not None and after < grown - 40


def _scenario(label, versus, limit, slipway_seconds, other_seconds, sent=0):
    scenario = Scenario(label, "goal", versus, limit)
    for seconds in slipway_seconds:
        scenario.measured(
            Measurement(seconds=seconds, phases={"queue": 0.1, "switch": 0.2}, bytes_sent=sent)
        )
    for seconds in other_seconds:
        scenario.add(versus or "tar", seconds)
    return scenario


def test_the_page_says_which_goals_are_met_from_the_medians():
    met = _scenario("(b) incremental", "rsync-tree", 0.5, [1.0, 1.1, 9.0], [2.4, 2.5, 2.6])
    missed = _scenario("(a) first", "tar", 1.0, [2.0, 2.1, 2.2], [1.9, 2.0, 2.1])
    no_bytes = _scenario("(d) redeploy", "", None, [1.0], [1.0], sent=0)
    some_bytes = _scenario("(d) redeploy", "", None, [1.0], [1.0], sent=4096)

    assert met.verdict() == "0.44x rsync, work tree: met"
    assert missed.verdict() == "1.05x tar over ssh: not met"
    assert no_bytes.verdict() == "0 bytes sent: met"
    assert some_bytes.verdict() == "4,096 bytes sent: not met"
    assert met.phases() == {"queue": 0.1, "switch": 0.2}


def test_a_quick_run_is_marked_as_one_with_its_date_and_commit():
    setting = Setting(
        quick=True,
        date="2026-12-01 03:00 UTC",
        commit="abc1234",
        repeat=2,
        files=1002,
        size=9_600_000,
        binaries=2,
        filesystem="tmpfs",
        user="slipway-bench",
        cores=2,
        load=(5.0, 4.0, 3.0),
        python="3.11",
        platform="Linux",
        growth_repeat=1,
        curve_files=500,
    )
    deploy = Deploy(seconds=1.0, phases={}, bytes_sent=10, peak_rss_mb=120.0)
    page = render(
        setting,
        [_scenario("(a) first", "tar", 1.0, [2.0, 2.5], [1.9, 2.0])],
        [Point(files=500, servers=1, first=deploy, incremental=deploy)],
        {"files": "benchmarks/files.png"},
    )

    assert "**Quick run**" in page and "2026-12-01 03:00 UTC" in page and "`abc1234`" in page
    assert "| (a) first | 2.25 s (2.00-2.50) |" in page
    assert "| 500 | 1 | 1.00 s | 120 MB |" in page
    assert "![Cost against files](benchmarks/files.png)" in page
    assert all(f" {phase} |" in page for phase in PHASES)


def _point(files, servers, first, incremental, peak):
    return Point(
        files=files,
        servers=servers,
        first=Deploy(seconds=first, phases={}, bytes_sent=0, peak_rss_mb=peak),
        incremental=Deploy(seconds=incremental, phases={}, bytes_sent=0, peak_rss_mb=peak),
    )


def test_the_curves_goals_compare_the_ends_of_each_curve():
    points = [
        _point(1_000, 1, first=1.0, incremental=0.5, peak=150.0),
        _point(100_000, 1, first=30.0, incremental=1.5, peak=280.0),
        _point(1_000, 10, first=2.0, incremental=1.0, peak=160.0),
        _point(1_000, 50, first=5.0, incremental=1.9, peak=170.0),
    ]

    assert curve_goals(points) == [
        "Goals:",
        "",
        "- 50 servers ≤ 4x the time of 1 (first deploy): 5.00x, not met",
        "- 50 servers ≤ 4x the time of 1 (incremental): 3.80x, met",
        "- incremental at 100,000 files ≤ 2x the one at 1,000: 3.00x, not met",
        "- worker peak RSS at 100,000 files ≤ 300 MB: 280 MB, met",
    ]
    assert curve_goals(points[:1]) == []


def test_time_covered_by_steps_counts_overlapping_steps_once():
    start = datetime(2026, 12, 1, tzinfo=UTC)

    def at(seconds):
        return start + timedelta(seconds=seconds)

    # Three servers' steps overlap; nothing runs between 5 and 7.
    steps = [(at(0), at(1)), (at(1), at(4)), (at(2), at(3)), (at(3.5), at(5)), (at(7), at(8))]
    assert _union_seconds(steps) == 6.0
    assert _union_seconds([]) == 0.0


def test_the_curves_show_the_baselines_measured_beside_them():
    one = dataclasses.replace(
        _point(1_000, 1, first=1.0, incremental=0.5, peak=150.0),
        tar_first=0.4,
        rsync_incremental=0.3,
    )
    most = dataclasses.replace(
        _point(1_000, 50, first=9.0, incremental=8.0, peak=170.0), tar_first=4.0
    )
    large = dataclasses.replace(
        _point(100_000, 1, first=9.0, incremental=5.0, peak=170.0), rsync_incremental=3.0
    )

    goals = curve_goals([one, most, large])

    assert (
        "  - the floor on this machine: tar over ssh to 50 servers at once takes 10.00x its "
        "time to 1 (4.00 s against 0.40 s)"
    ) in goals
    assert "  - rsync from a work tree, on the same change: 10.00x (3.00 s against 0.30 s)" in goals


def test_the_page_names_the_floor_beside_a_goal_not_met_and_on_the_files_curve():
    scenario = _scenario("(b) incremental", "rsync-tree", 0.5, [0.8, 0.8, 0.9], [1.2, 1.3, 1.4])
    scenario.floor = "linked"
    scenario.add("linked", 0.65)
    small = dataclasses.replace(
        _point(1_000, 1, first=1.0, incremental=0.5, peak=150.0), linked_incremental=0.2
    )
    large = dataclasses.replace(
        _point(100_000, 1, first=9.0, incremental=5.0, peak=170.0), linked_incremental=2.4
    )

    assert scenario.verdict() == (
        "0.62x rsync, work tree: not met (the floor, a hard-linked release: 0.50x)"
    )
    assert (
        "  - the floor of any deploy into a new release directory (a hard-linked release: "
        "`cp -al`, the change, the switch): 12.00x (2.40 s against 0.20 s)"
    ) in curve_goals([small, large])
