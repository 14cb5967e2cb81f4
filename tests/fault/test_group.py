"""Cases 4-5: the consumer group under rebalances and under processing slower than
``max.poll.interval.ms``.

Case 4 proves exclusive ownership two ways: the group coordinator's view (sampled all
along: no partition ever assigned to two members at once, and all three owned after
each step settles), and the members' own view, rebuilt from their ``partitions
assigned`` / ``revoked`` / ``lost`` log lines: no member logs a partition as assigned
while another has not yet logged giving it up.

Case 5 makes every database write take longer than the poll interval (a statement
trigger sleeps 12 s; ``KAFKA_MAX_POLL_INTERVAL_MS`` is 10 s). The consumer bounds each
statement to a third of the interval (src/foodpipe/db.py ``consumer_session``), retries
with its partitions paused while it keeps polling, and must keep its single membership:
no revocation, no lost partitions, no "maximum poll interval exceeded".
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.fault.harness import Fault, Sampler, Service, group_members
from tests.fault.test_consumer_crashes import SLOW_WRITE, blocked_insert_pids
from tests.support import wait_until

pytestmark = pytest.mark.fault

PARTITIONS = {0, 1, 2}


def ownership_timeline(consumers: list[Service]) -> list[tuple[datetime, int, str, int]]:
    """(time, member index, kind, partition) from the members' rebalance log lines."""
    timeline = []
    for index, consumer in enumerate(consumers):
        for event in consumer.events():
            name = str(event.get("event", ""))
            if name.startswith("partitions assigned"):
                kind, parts = "assign", event.get("added", [])
            elif name.startswith("partitions revoked"):
                kind, parts = "release", event.get("revoked", [])
            elif name.startswith("partitions lost"):
                kind, parts = "release", event.get("lost", [])
            else:
                continue
            when = datetime.fromisoformat(str(event["ts"]).replace("Z", "+00:00"))
            for part in parts:  # "topic[2]"
                timeline.append((when, index, kind, int(str(part).rsplit("[", 1)[1][:-1])))
    # At equal timestamps a release sorts before an assign.
    return sorted(timeline, key=lambda e: (e[0], e[2] != "release"))


def assert_one_owner_at_a_time(consumers: list[Service]) -> int:
    owner: dict[int, int] = {}
    handovers = 0
    for when, member, kind, partition in ownership_timeline(consumers):
        if kind == "assign":
            assert partition not in owner, (
                f"partition {partition} assigned to member {member} at {when} while member"
                f" {owner[partition]} still owned it"
            )
            owner[partition] = member
            handovers += 1
        else:
            assert owner.get(partition) == member, (
                f"member {member} released partition {partition} at {when} it did not own"
            )
            del owner[partition]
    return handovers


def coordinator_view(f: Fault) -> dict[str, set[int]] | None:
    try:
        return group_members(f.bootstrap, f.pipeline.group)
    except Exception:
        return None


def settled(f: Fault, members: int) -> bool:
    view = coordinator_view(f) or {}
    owned = list(view.values())
    return (
        len(view) == members
        and all(owned)
        and set().union(*owned) == PARTITIONS
        and sum(len(p) for p in owned) == len(PARTITIONS)
    )


@pytest.mark.timeout(240)
def test_case04_scaling_1_2_3_1_under_load_keeps_one_owner_per_partition(
    fault: Callable[..., Fault], soak: bool
) -> None:
    f = fault("4", "scale consumers 1 -> 2 -> 3 -> 1")
    f.produce(None, rate=2000 if soak else 500, seed=104)  # until the group is back to one
    views = Sampler(lambda: coordinator_view(f), 0.3)
    consumers: list[Service] = []
    try:
        for size in (1, 2, 3):
            consumers.append(f.consume())
            wait_until(
                lambda size=size: settled(f, size),  # type: ignore[misc]
                timeout=60,
                message=lambda size=size: (
                    f"{size} members sharing 3 partitions: "  # type: ignore[misc]
                    f"{coordinator_view(f)}"
                ),
            )
            f.wait_rows(f.rows() + 500)
        # Scale back to one: the two newest members leave cleanly.
        for consumer in consumers[1:]:
            code, _seconds = consumer.terminate()
            assert code == 0, consumer.tail()
        f.cleared()
        wait_until(
            lambda: settled(f, 1),
            timeout=60,
            message=lambda: f"one member owning all 3 partitions: {coordinator_view(f)}",
        )
        f.wait_recovered(timeout=60)
        f.stop_producers()
        report = f.finish()
    finally:
        views.stop()

    # The coordinator never listed a partition under two members.
    for view in views.values():
        owned = [p for parts in view.values() for p in parts]
        assert len(owned) == len(set(owned)), f"a partition owned twice: {view}"
    # The members agree: each partition had one owner at a time, across 3 handover rounds.
    handovers = assert_one_owner_at_a_time(consumers)
    assert handovers >= 6, handovers  # 3 initial + moves to members 2 and 3 and back
    assert report.rows == report.acknowledged


def _rebalance_events(consumer: Service) -> dict[str, int]:
    counts = {"assign": 0, "revoke": 0, "lost": 0}
    for event in consumer.events():
        name = str(event.get("event", ""))
        for kind, prefix in (
            ("assign", "partitions assigned"),
            ("revoke", "partitions revoked"),
            ("lost", "partitions lost"),
        ):
            if name.startswith(prefix):
                counts[kind] += 1
    return counts


SLOW_TRIGGER = """
CREATE OR REPLACE FUNCTION fault_slow_statement() RETURNS trigger
LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep({seconds}); RETURN NULL; END $$;
CREATE TRIGGER fault_slow_statement BEFORE INSERT ON orders
    FOR EACH STATEMENT EXECUTE FUNCTION fault_slow_statement();
"""


@pytest.mark.timeout(180)
def test_case05_processing_slower_than_max_poll_interval_keeps_the_membership(
    fault: Callable[..., Fault], soak: bool
) -> None:
    max_poll_ms = 10_000
    f = fault("5", "processing slower than max.poll.interval.ms")
    f.env["KAFKA_MAX_POLL_INTERVAL_MS"] = str(max_poll_ms)
    slow_s = 3 * max_poll_ms / 1000 if soak else 2 * max_poll_ms / 1000
    # Unbounded: orders must still be arriving while the writes are blocked.
    f.produce(None, rate=300, seed=105)
    consumer = f.consume()
    f.wait_assigned(consumer)
    f.wait_rows(500)
    member_before = set(coordinator_view(f) or {})

    # Every INSERT now sleeps 12 s before doing anything: longer than the poll interval.
    with f.pipeline.admin_engine.begin() as conn:
        conn.exec_driver_sql(SLOW_TRIGGER.format(seconds=1.2 * max_poll_ms / 1000))
    rows_before = f.rows()

    def still_member() -> None:
        assert consumer.alive(), consumer.tail()
        assert _rebalance_events(consumer) == {"assign": 1, "revoke": 0, "lost": 0}, consumer.tail()

    f.hold(slow_s, check=still_member)
    assert f.rows() == rows_before, "a write got through the slow trigger"
    with f.pipeline.admin_engine.begin() as conn:
        conn.execute(text("DROP TRIGGER fault_slow_statement ON orders"))
    f.cleared()
    f.wait_recovered(timeout=90)

    retries: list[dict[str, Any]] = consumer.events(
        "database write failed; retrying the same batch, partitions paused"
    )
    # Each attempt was cut by the bounded statement_timeout (SQLSTATE 57014, query
    # canceled), which is transient: retried with backoff while the loop kept polling.
    assert len(retries) >= 2, consumer.tail()
    assert {r["sqlstate"] for r in retries} == {"57014"}, retries
    assert set(coordinator_view(f) or {}) == member_before, "the member was replaced"
    f.notes.append(
        f"DB writes blocked {slow_s:.0f}s > max.poll {max_poll_ms / 1000:.0f}s;"
        f" {len(retries)} bounded retries, 0 rebalances"
    )
    f.stop_producers()
    f.finish()
    # One assignment for the whole run; the only revocation is the one of the final close.
    assert _rebalance_events(consumer) == {"assign": 1, "revoke": 1, "lost": 0}
    log = consumer.log_path.read_text()
    assert "MAX_POLL_EXCEEDED" not in log
    assert "maximum poll interval" not in log.lower()


@pytest.mark.timeout(240)
def test_case04b_revoke_with_two_batches_in_flight_loses_nothing_commits_nothing_unwritten(
    fault: Callable[..., Fault],
) -> None:
    f = fault("4b", "revoke with two batches in flight")
    f.produce(None, rate=450, seed=114)  # until the revocation is done
    admin = create_engine(f.pipeline.db_admin_url)
    try:
        first = f.consume()
        f.wait_assigned(first)
        f.wait_rows(f.rows() + 1)
        with admin.connect() as conn, conn.begin():
            # SHARE blocks INSERTs but not reads: the new member's start-up check (a SELECT
            # on orders) must pass, or it never joins the group.
            conn.execute(text("LOCK TABLE orders IN SHARE MODE"))
            # Batch n blocked in its transaction, batch n+1 validated and waiting.
            wait_until(
                lambda: first.events(SLOW_WRITE) and blocked_insert_pids(f.pipeline.admin_engine),
                timeout=30,
                interval=0.02,
                message=lambda: f"two batches in flight, the first blocked:\n{first.tail()}",
            )
            # A new member: the group takes partitions from the first one, whose revoke
            # callback runs while both batches are in flight (its write fails on the lock
            # timeout and the retry wait polls, which serves the callback).
            second = f.consume()
            wait_until(
                lambda: first.events_starting("partitions revoked"),
                timeout=60,
                interval=0.05,
                message=lambda: f"the first member to give up partitions:\n{first.tail()}",
            )
        # Lock released: the first member writes what is left of its batches, the new one
        # reads the revoked partitions again from their committed offsets.
        f.cleared()
        f.wait_recovered(timeout=90)
    finally:
        admin.dispose()
    f.stop_producers()
    f.notes.append("a revocation with batch n blocked in its transaction and n+1 validated")
    f.finish()
    assert_one_owner_at_a_time([first, second])
