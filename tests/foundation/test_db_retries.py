"""deployer.db: a transaction that meets a deadlock or loses its connection runs again, and
its caller never sees the error (PostgreSQL: the embedded mode's SQLite has one writer)."""

from __future__ import annotations

import threading

import pytest
from django.contrib.auth.models import User
from django.db import OperationalError, connection, transaction

from deployer.db import project_lock, retrying
from tests.support.processes import require_scaled_out

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _postgres_only():
    require_scaled_out()


def _in_thread(target, *args):
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target(*args)
        except BaseException as exc:  # reported to the test below
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


def test_it_runs_again_the_transaction_that_postgres_chose_as_a_deadlock_victim(alice, bob):
    both_hold_one = threading.Barrier(2, timeout=30)
    runs: list[str] = []

    @retrying
    def rename(first: int, second: int, name: str) -> None:
        runs.append(name)
        User.objects.select_for_update().get(pk=first)
        if runs.count(name) == 1:
            both_hold_one.wait()  # each holds its first row: the second lock closes the cycle
        User.objects.select_for_update().get(pk=second)
        User.objects.filter(pk__in=[first, second]).update(first_name=name)

    one, one_errors = _in_thread(rename, alice.pk, bob.pk, "one")
    two, two_errors = _in_thread(rename, bob.pk, alice.pk, "two")
    one.join(60)
    two.join(60)

    assert one_errors == [] and two_errors == []
    # PostgreSQL broke the deadlock by failing one of them; that one ran a second time.
    assert sorted(runs) in (["one", "one", "two"], ["one", "two", "two"])
    alice.refresh_from_db()
    bob.refresh_from_db()
    assert alice.first_name == bob.first_name == runs[-1]


def test_without_the_helper_the_same_deadlock_reaches_the_caller(alice, bob):
    """The failure the helper absorbs is real: the same two transactions, not retried."""
    both_hold_one = threading.Barrier(2, timeout=30)

    def rename(first: int, second: int) -> None:
        with transaction.atomic():
            User.objects.select_for_update().get(pk=first)
            both_hold_one.wait()
            User.objects.select_for_update().get(pk=second)

    one, one_errors = _in_thread(rename, alice.pk, bob.pk)
    two, two_errors = _in_thread(rename, bob.pk, alice.pk)
    one.join(60)
    two.join(60)

    errors = one_errors + two_errors
    assert len(errors) == 1 and isinstance(errors[0], OperationalError)
    assert "deadlock detected" in str(errors[0])


def test_it_runs_again_a_transaction_whose_connection_was_killed(alice):
    runs: list[int] = []

    @retrying
    def rename() -> None:
        runs.append(1)
        User.objects.filter(pk=alice.pk).update(first_name=f"attempt {len(runs)}")
        if len(runs) == 1:
            # What an operator's pg_terminate_backend, or a PostgreSQL restart, does.
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    rename()

    assert len(runs) == 2
    alice.refresh_from_db()
    assert alice.first_name == "attempt 2"


def test_inside_a_callers_transaction_it_leaves_the_retry_to_that_caller(alice):
    runs: list[int] = []

    @retrying
    def rename() -> None:
        runs.append(1)
        User.objects.filter(pk=alice.pk).update(first_name="renamed")
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    with pytest.raises(OperationalError), transaction.atomic():
        rename()
    connection.close()

    assert runs == [1]  # half of an outer transaction is never run again on its own
    alice.refresh_from_db()
    assert alice.first_name == ""


def test_the_project_lock_makes_a_second_transaction_of_the_project_wait(alice):
    first_holds = threading.Event()
    release_first = threading.Event()
    order: list[str] = []

    def hold() -> None:
        with transaction.atomic():
            project_lock(41)
            first_holds.set()
            release_first.wait(30)
            order.append("first done")

    def follow() -> None:
        with transaction.atomic():
            project_lock(41)
            order.append("second has the lock")

    first, first_errors = _in_thread(hold)
    assert first_holds.wait(30)
    second, second_errors = _in_thread(follow)
    # The second waits on the lock, seen from PostgreSQL: no sleep decides this test.
    with connection.cursor() as cursor:
        for _ in range(300):
            cursor.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            if cursor.fetchone()[0] == 1:
                break
            threading.Event().wait(0.1)
        else:
            raise AssertionError("the second transaction never waited for the project lock")
    release_first.set()
    first.join(30)
    second.join(30)

    assert first_errors == second_errors == []
    assert order == ["first done", "second has the lock"]
