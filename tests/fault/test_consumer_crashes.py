"""Cases 1-3: the consumer dies (SIGKILL at two precise moments) or is asked to stop (SIGTERM).

Load flows throughout: a real ``foodpipe produce`` keeps sending while consumers are
killed and restarted, and every case ends with the full invariant check.

How case 1 finds its moment: the window between the database commit and the offset
commit lasts microseconds and logs nothing, so no outside observer can hit it reliably
(a SIGSTOP on a log line would land after the offset commit most of the time). The
consumer therefore has one test-only hook, ``FOODPIPE_FAULT=crash-after-db-commit:N``
(src/foodpipe/consumer/faults.py, off by default): after its Nth written batch it logs
one line and SIGKILLs itself before committing the offsets.

How case 2 finds "mid-batch, before the DB commit": an ACCESS EXCLUSIVE lock on the
table makes the consumer's INSERT wait; pg_stat_activity shows that wait, and the
consumer is SIGKILLed while it is certainly inside a batch whose transaction is open.
Two more kills land at arbitrary moments of the loop (when the row count passes a
threshold), as an operator's ``kill -9`` would.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest
from sqlalchemy import Engine, create_engine, text

from tests.fault.harness import FAST_SESSION_MS, Fault, Service
from tests.support import wait_until

pytestmark = pytest.mark.fault


def blocked_insert_pids(admin_engine: Engine) -> list[int]:
    """Backends of the consumer waiting on a lock in ``INSERT INTO orders``."""
    with admin_engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = 'foodpipe'"
                    " AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO orders%'"
                    " AND datname = current_database()"
                )
            ).scalars()
        )


@pytest.mark.timeout(180)
def test_case01_sigkill_after_db_commit_before_offset_commit_is_redelivered_not_duplicated(
    fault: Callable[..., Fault], soak: bool
) -> None:
    f = fault("1", "SIGKILL after DB commit, before offset commit")
    kills = 6 if soak else 3
    # Unbounded production (stopped before the check): every victim finds batches to write
    # however long the earlier rounds took.
    f.produce(None, rate=1500 if soak else 400, seed=101)

    for round_ in range(kills):
        # The crash comes after this consumer's 2nd written batch.
        victim = f.consume(env={"FOODPIPE_FAULT": "crash-after-db-commit:2"})
        code = victim.wait(timeout=60 + FAST_SESSION_MS / 1000)
        assert code == -signal.SIGKILL, f"round {round_}: exit {code}\n{victim.tail()}"
        assert victim.events(
            "fault injection: SIGKILL after the DB commit, before the offset commit"
        ), victim.tail()
    survivor = f.consume()
    f.cleared()
    f.wait_recovered(timeout=90)
    f.stop_producers()
    f.notes.append(f"{kills} crashes after the DB commit")
    report = f.finish()

    # Every killed batch was in PostgreSQL without its offsets: it came back, and the
    # idempotent insert absorbed it instead of duplicating rows.
    assert report.rewritten >= kills, report
    assert survivor.events("consumer closed")[-1]["duplicates"] >= 1


@pytest.mark.timeout(240)
def test_case02_sigkill_mid_batch_before_db_commit_loses_nothing(
    fault: Callable[..., Fault], soak: bool
) -> None:
    f = fault("2", "SIGKILL mid-batch, before DB commit")
    locked_kills = 4 if soak else 2
    timed_kills = 6 if soak else 2
    # No --count: the producer runs until every kill is done, so each round has work in
    # flight however long the earlier recoveries took (with a fixed count, a slow CI
    # machine once let the consumer catch up before the timed kills and the case hung).
    f.produce(None, rate=1500 if soak else 450, seed=102)
    admin = create_engine(f.pipeline.db_admin_url)

    try:
        consumer = f.consume()
        for _ in range(locked_kills):
            f.wait_assigned(consumer)
            f.wait_rows(f.rows() + 1)  # it is writing
            with admin.connect() as conn, conn.begin():
                conn.execute(text("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE"))
                # The consumer polled a batch and its INSERT now waits inside an open
                # transaction: the definition of "mid-batch, before the DB commit".
                wait_until(
                    lambda: blocked_insert_pids(f.pipeline.admin_engine),
                    timeout=30,
                    interval=0.02,
                    message="the consumer's INSERT to wait on the lock",
                )
                assert consumer.kill() == -signal.SIGKILL
            # Lock released (rollback). A new member takes over once the dead one's
            # session expires; the killed batch was never committed, so it is read again.
            consumer = f.consume()
            f.cleared()
            f.wait_recovered(timeout=60)
        for _ in range(timed_kills):
            f.wait_assigned(consumer)
            f.wait_rows(f.rows() + 300)  # somewhere in the loop: polling, writing, committing
            assert consumer.kill() == -signal.SIGKILL
            consumer = f.consume()
            f.cleared()
            f.wait_recovered(timeout=60)
    finally:
        admin.dispose()
    f.stop_producers()
    f.notes.append(f"{locked_kills} kills inside an open transaction, {timed_kills} at random")
    f.finish()


#: Logged by the loop when batch n+1 is validated and still waits for batch n's write.
SLOW_WRITE = "the database write is slow; the next batch is validated and waits for it"


@pytest.mark.timeout(240)
def test_case02b_sigkill_with_two_batches_in_flight_loses_nothing_commits_nothing_unwritten(
    fault: Callable[..., Fault], soak: bool
) -> None:
    f = fault("2b", "SIGKILL with two batches in flight")
    kills = 4 if soak else 2
    f.produce(None, rate=1500 if soak else 450, seed=112)  # until the last kill is done
    admin = create_engine(f.pipeline.db_admin_url)
    try:
        consumer = f.consume()
        for _ in range(kills):
            f.wait_assigned(consumer)
            f.wait_rows(f.rows() + 1)  # it is writing
            with admin.connect() as conn, conn.begin():
                conn.execute(text("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE"))

                # Batch n's INSERT waits on the lock inside its open transaction (on the
                # writer thread) while the loop gathers and validates batch n+1, then says
                # that n+1 waits for n: both are in flight, neither is committed.
                def both_in_flight(victim: Service = consumer) -> bool:
                    return bool(victim.events(SLOW_WRITE)) and bool(
                        blocked_insert_pids(f.pipeline.admin_engine)
                    )

                wait_until(
                    both_in_flight,
                    timeout=30,
                    interval=0.02,
                    message=lambda victim=consumer: f"two batches in flight:\n{victim.tail()}",
                )
                assert consumer.kill() == -signal.SIGKILL
            # Lock released. The next member reads both batches again from the committed
            # offset: nothing of either was committed, so nothing is lost.
            consumer = f.consume()
            f.cleared()
            f.wait_recovered(timeout=60)
    finally:
        admin.dispose()
    f.stop_producers()
    f.notes.append(f"{kills} kills with batch n blocked in its transaction and n+1 validated")
    f.finish()


@pytest.mark.timeout(180)
def test_case03_sigterm_finishes_the_batch_commits_and_exits_0_within_seconds(
    fault: Callable[..., Fault], soak: bool
) -> None:
    f = fault("3", "SIGTERM: finish batch, commit, exit 0")
    stops = 6 if soak else 3
    f.produce(None, rate=1500 if soak else 500, seed=103)  # until the last stop is done
    exit_times = []
    consumer: Service = f.consume()
    for _ in range(stops):
        f.wait_assigned(consumer)
        f.wait_rows(f.rows() + 200)
        code, seconds = consumer.terminate(timeout=30)
        assert code == 0, consumer.tail()
        # "Within a few seconds": the batch in hand (<= BATCH_TIMEOUT_MS to gather, one
        # transaction, one commit) and leaving the group.
        assert seconds < 5, f"took {seconds:.1f}s to stop after SIGTERM"
        closed = consumer.events("consumer closed")
        assert closed, consumer.tail()
        exit_times.append(seconds)
        consumer = f.consume()
        f.cleared()
        f.wait_recovered(timeout=60)
    f.stop_producers()
    f.notes.append(f"{stops} SIGTERMs, exit 0 in <= {max(exit_times):.2f}s")
    report = f.finish()
    # Each stopping consumer committed everything it wrote: its successor rewrote nothing.
    assert report.rewritten == 0, report
    assert report.redeliveries == 0, report
