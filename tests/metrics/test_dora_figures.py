"""DORA's four keys computed from the fixture history (tests/metrics/history.py), whose
answers are worked out by hand there, and the rules one at a time."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from builds.dora import DeploymentRecord, Outcome, dora_report, is_fix, window_start
from tests.metrics.history import NOW, key_of, records

MINUTE = 60.0
HOUR = 3600.0


def _production(**options):
    return dora_report(records("production"), now=NOW, days=7, environment="production", **options)


def test_it_counts_the_deployments_that_went_live_per_day_and_week():
    report = _production()

    assert report.since == datetime(2026, 10, 31, tzinfo=UTC)
    assert report.deployments == 10
    assert report.successful_deployments == 8
    assert report.deployments_per_day == 8 / 7
    assert report.deployments_per_week == 8.0


def test_it_takes_the_median_lead_time_from_the_first_commit_to_live():
    report = _production()

    assert sorted(report.lead_times) == [
        30 * MINUTE,
        1 * HOUR,
        70 * MINUTE,
        2 * HOUR,
        2 * HOUR,
        2 * HOUR,
        3 * HOUR,
    ]
    assert report.lead_time_seconds == 2 * HOUR
    assert report.lead_time_unmeasured == 1  # d11: recorded before first commits were kept


def test_it_counts_failed_rolled_back_fixed_and_reverted_deployments_as_failed_changes():
    report = _production()

    failed = {key_of(row.record.id): row.failure_reason for row in report.rows if row.change_failed}
    assert failed == {"d3": "failed", "d5": "rolled_back", "d8": "fixed", "d10": "reverted"}
    assert report.failed_changes == 4
    assert report.change_failure_rate == 0.4


def test_it_takes_the_median_time_to_restore_to_the_next_deployment_that_went_live():
    report = _production()

    restored = {
        key_of(row.record.id): (row.time_to_restore_seconds, key_of(row.restored_by))
        for row in report.rows
        if row.change_failed
    }
    assert restored == {
        "d3": (65 * MINUTE, "d4"),
        "d5": (32 * MINUTE, "r6"),
        "d8": (2 * HOUR, "d9"),
        "d10": (1 * HOUR, "d11"),
    }
    assert report.time_to_restore_seconds == 62.5 * MINUTE
    assert report.unrestored_failures == 0


def test_it_gives_each_day_of_the_window_its_figures():
    report = _production()

    days = {
        day.day: (day.live, day.live_then_failed, day.failed, day.rollbacks)
        for day in report.per_day
    }
    assert list(days) == [date(2026, 10, 31) + timedelta(days=n) for n in range(7)]
    assert days == {
        date(2026, 10, 31): (0, 0, 0, 0),
        date(2026, 11, 1): (0, 0, 0, 0),
        date(2026, 11, 2): (2, 0, 0, 0),
        date(2026, 11, 3): (1, 0, 1, 0),
        date(2026, 11, 4): (1, 1, 0, 1),
        date(2026, 11, 5): (1, 1, 0, 0),
        date(2026, 11, 6): (1, 0, 1, 0),
    }
    second = report.per_day[2]
    assert second.lead_time_seconds == (70 * MINUTE + 2 * HOUR) / 2
    assert second.duration_seconds == 10 * MINUTE
    assert report.per_day[3].change_failure_rate == 0.5
    assert report.per_day[0].change_failure_rate is None


def test_all_environments_add_staging_and_staging_alone_has_its_one_deployment():
    everything = dora_report(records(), now=NOW, days=7)
    staging = dora_report(records("staging"), now=NOW, days=7, environment="staging")

    assert everything.deployments == 11
    assert everything.successful_deployments == 9
    assert everything.failed_changes == 4
    assert everything.lead_time_seconds == (70 * MINUTE + 2 * HOUR) / 2
    assert (staging.deployments, staging.successful_deployments) == (1, 1)
    assert staging.lead_time_seconds == 65 * MINUTE
    assert staging.change_failure_rate == 0.0
    assert staging.time_to_restore_seconds is None


def test_a_longer_window_takes_in_the_older_deployment():
    report = dora_report(records("production"), now=NOW, days=30)

    assert report.successful_deployments == 9
    assert report.deployments_per_week == 9 * 7 / 30
    assert len(report.per_day) == 30


def test_a_fix_outside_the_window_or_with_the_rule_off_is_no_failure():
    assert _production(fix_window_hours=1).failed_changes == 3
    assert _production(fix_window_hours=0).failed_changes == 3
    assert _production(fix_window_hours=2).failed_changes == 4


def _record(number, kind, hour, outcome=Outcome.LIVE, **fields):
    start = datetime(2026, 11, 6, hour, tzinfo=UTC)
    return DeploymentRecord(
        id=number,
        kind=kind,
        outcome=outcome,
        created_at=start,
        started_at=start,
        finished_at=start + timedelta(minutes=5),
        **fields,
    )


def test_a_rollback_that_names_a_deployment_fails_it_even_after_later_ones():
    history = [
        _record(1, "deploy", 1),
        _record(2, "deploy", 2),
        _record(3, "rollback", 3, rollback_of=1),
    ]

    report = dora_report(history, now=NOW, days=1)

    assert [row.failure_reason for row in report.rows] == ["rolled_back", "rolled_back", ""]


def test_a_failure_not_restored_yet_is_counted_apart():
    report = dora_report([_record(1, "deploy", 1, outcome=Outcome.FAILED)], now=NOW, days=1)

    assert report.failed_changes == 1
    assert report.unrestored_failures == 1
    assert report.time_to_restore_seconds is None


def test_cancelled_deployments_count_nowhere():
    report = dora_report([_record(1, "deploy", 1, outcome=Outcome.CANCELLED)], now=NOW, days=1)

    assert (report.deployments, report.change_failure_rate, report.per_day[0].deployments) == (
        0,
        None,
        0,
    )


def test_it_knows_a_fix_by_its_commit_subjects_or_branch():
    assert is_fix(["fix: rounding"], "main")
    assert is_fix(["Fix(cart): totals"], "main")
    assert is_fix(['Revert "Add the basket"'], "main")
    assert is_fix(["Hotfix for the login"], "main")
    assert is_fix([], "hotfix/login")
    assert not is_fix(["fixes are welcome", "Prefix the ids", "fixup! Add"], "main")
    assert not is_fix([], "feature/fixing")


def test_the_window_is_whole_utc_days_ending_today():
    assert window_start(NOW, 1) == datetime(2026, 11, 6, tzinfo=UTC)
    assert window_start(NOW, 90) == datetime(2026, 8, 9, tzinfo=UTC)
