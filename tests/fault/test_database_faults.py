"""Cases 9-10: PostgreSQL stopped (``pg_ctl stop -m immediate``) and PostgreSQL slow (a lock).

While the database cannot take a batch, the consumer must not commit an offset, must
not crash-loop (one process, backing off), must keep its group membership, and must
keep its memory bounded (its partitions are paused, so nothing more is fetched). When
the database is back it catches up by itself.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.fault.harness import Fault, OffsetProbe, Sampler, Service
from tests.support import wait_until

pytestmark = pytest.mark.fault

RETRY_EVENT = "database write failed; retrying the same batch, partitions paused"
#: The memory limit of the consumer container on the AWS target.
CONTAINER_LIMIT_KB = 128 * 1024


def rebalance_counts(consumer: Service) -> dict[str, int]:
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


@pytest.mark.timeout(240)
def test_case09_postgres_stopped_commits_no_offset_backs_off_and_catches_up(
    fault: Callable[..., Fault], soak: bool
) -> None:
    f = fault("9", "PostgreSQL stopped (immediate), then started")
    outage_s = 30.0 if soak else 20.0
    f.produce(None, rate=400, seed=109)
    consumer = f.consume()
    f.wait_assigned(consumer)
    f.wait_rows(1000)

    f.stack.pg_stop()
    stopped_at = len(consumer.events(RETRY_EVENT))
    # The first failed write proves the loop reached a batch it cannot write; any batch
    # written before the stop has had its offsets committed by then (one thread).
    wait_until(
        lambda: len(consumer.events(RETRY_EVENT)) > stopped_at,
        timeout=30,
        message=lambda: f"the consumer to notice PostgreSQL is down:\n{consumer.tail()}",
    )
    probe = OffsetProbe(f.bootstrap, f.pipeline.group, f.pipeline.topic)
    try:
        frozen = probe()
        # While PostgreSQL is down: the same single process, and no offset moves.
        f.hold(
            outage_s,
            check=lambda: (
                None
                if consumer.alive() and probe() == frozen
                else pytest.fail(
                    f"offsets moved or the consumer died while PostgreSQL was down: {probe()}"
                    f" != {frozen}\n{consumer.tail()}"
                )
            ),
        )
        assert probe() == frozen
    finally:
        probe.close()
        f.stack.pg_start()
    f.cleared()
    f.wait_recovered(timeout=120)

    retries: list[dict[str, Any]] = consumer.events(RETRY_EVENT)[stopped_at:]
    delays = [r["retry_in_s"] for r in retries]
    # Exponential backoff, not a crash loop: a handful of attempts, each wait about
    # twice the previous one (jitter takes up to 20% off), capped at 30 s.
    assert 2 <= len(retries) <= 12, delays
    for before, after in itertools.pairwise(delays):
        assert after >= min(before * 1.5, 24.0), delays
    assert {r["failure"] for r in retries} == {"transient"}, retries
    assert len(consumer.events("starting consumer")) == 1
    f.stop_producers()
    f.notes.append(f"down {outage_s:.0f}s; {len(retries)} retries, waits {delays}")
    f.finish()


@pytest.mark.timeout(240)
def test_case10_postgres_slow_lock_keeps_membership_and_memory_bounded(
    fault: Callable[..., Fault], soak: bool
) -> None:
    # Product defaults for the group timeouts: no help from a short session here.
    f = fault("10", "PostgreSQL slow: table lock held", fast_session=False)
    lock_s = 60.0 if soak else 20.0
    f.produce(None, rate=800, seed=110)
    consumer = f.consume()
    f.wait_assigned(consumer)
    f.wait_rows(1000)
    rss = Sampler(lambda: consumer.rss_kb() if consumer.alive() else None, 0.25)
    retries_before = len(consumer.events(RETRY_EVENT))
    locker = create_engine(f.pipeline.db_admin_url)
    try:
        with locker.connect() as conn, conn.begin():
            # Readers may read, nobody may write: every INSERT waits for lock_timeout.
            conn.execute(text("LOCK TABLE orders IN EXCLUSIVE MODE"))
            locked_from = len(rss.samples)
            f.hold(
                lock_s,
                check=lambda: (
                    None
                    if consumer.alive()
                    and rebalance_counts(consumer) == {"assign": 1, "revoke": 0, "lost": 0}
                    else pytest.fail(f"membership changed under the lock:\n{consumer.tail()}")
                ),
            )
            during = [kb for _, kb in rss.samples[locked_from:]]
        f.cleared()
        f.wait_recovered(timeout=120)
    finally:
        rss.stop()
        locker.dispose()

    retries: list[dict[str, Any]] = consumer.events(RETRY_EVENT)[retries_before:]
    # lock_timeout fired (SQLSTATE 55P03), classified transient, retried with backoff.
    assert retries, consumer.tail()
    assert {r["sqlstate"] for r in retries} == {"55P03"}, retries
    # Paused partitions fetch nothing: memory stays flat while the backlog grows.
    assert max(during) < CONTAINER_LIMIT_KB, f"consumer RSS peaked at {max(during)} kB"
    last_half = during[len(during) // 2 :]
    assert max(last_half) - min(last_half) < 8 * 1024, f"RSS still growing: {last_half[::8]}"
    f.stop_producers()
    f.notes.append(
        f"locked {lock_s:.0f}s; {len(retries)} retries (55P03), consumer RSS"
        f" {min(during) // 1024}-{max(during) // 1024} MB, 1 assignment"
    )
    f.finish()
    assert rebalance_counts(consumer) == {"assign": 1, "revoke": 1, "lost": 0}
