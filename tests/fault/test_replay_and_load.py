"""Cases 14-16: a full replay, a large backlog under a memory limit, and a soak.

- 14: the group's offsets are reset to the earliest and everything is consumed again:
  every valid order is offered to the idempotent insert a second time (counted as
  redeliveries), every poison message is dead-lettered again, and the table does not
  change by one row.
- 15: a backlog is drained by one consumer inside a real 128 MB memory cgroup (as on
  the t2.small target; where cgroups cannot be created, its peak RSS is held to 128 MB
  instead): no OOM kill, and RSS levels off instead of growing with the backlog.
- 16: producer and consumer run for a while at a high rate (hours at 10/s compressed
  into minutes at hundreds per second); their RSS and open file descriptors stay flat.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from tests.fault.harness import Fault, Sampler, cgroup_oom_kills
from tests.fault.invariants import end_offsets, partitions_of
from tests.fault.test_bad_input import poison_round
from tests.support import wait_until

pytestmark = pytest.mark.fault

CONTAINER_LIMIT_MB = 128


def reset_to_earliest(bootstrap: str, group: str, topic: str) -> None:
    """What ``kafka-consumer-groups --reset-offsets --to-earliest --execute`` does."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    from confluent_kafka import Consumer

    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": "fault-earliest"})
    try:
        earliest = [
            TopicPartition(topic, p, reader.get_watermark_offsets(TopicPartition(topic, p))[0])
            for p in partitions_of(bootstrap, topic)
        ]
    finally:
        reader.close()
    futures = admin.alter_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, earliest)], request_timeout=30
    )
    result = futures[group].result(timeout=30)
    assert all(tp.error is None for tp in result.topic_partitions), result


@pytest.mark.timeout(180)
def test_case14_reset_to_earliest_replays_everything_and_changes_no_row(
    fault: Callable[..., Fault], soak: bool
) -> None:
    f = fault("14", "offsets reset to earliest, full replay")
    orders = 30_000 if soak else 6_000
    f.produce(orders, rate=3000, seed=114)
    consumer = f.consume()
    f.wait_acked(orders // 2)
    f.inject(poison_round(first_valid=2000))
    f.wait_producers()
    f.wait_rows(orders)
    f.cleared()
    f.wait_recovered(timeout=60)
    code, _ = consumer.terminate()
    assert code == 0
    rows_before = f.rows()

    reset_to_earliest(f.bootstrap, f.pipeline.group, f.pipeline.topic)
    f.new_offset_phase()  # the reset moves offsets back on purpose; check each side of it
    started = time.monotonic()
    replayer = f.consume()
    f.cleared()
    f.wait_recovered(timeout=120)
    replay_s = time.monotonic() - started
    assert f.rows() == rows_before
    f.notes.append(
        f"replayed {sum(end_offsets(f.bootstrap, f.pipeline.topic).values())} in {replay_s:.1f}s"
    )
    report = f.finish()
    stats = replayer.events("consumer closed")[-1]
    valid = report.valid_messages
    assert (stats["written"], stats["duplicates"], stats["conflicts"]) == (0, valid, 0)
    # Every valid message was offered again (the write log), every poison re-dead-lettered.
    assert report.rewritten == valid
    assert report.dlq_repeats == report.invalid_sent
    assert report.rows == rows_before


@pytest.mark.timeout(300)
def test_case15_large_backlog_drains_within_128_mb_and_rss_levels_off(
    fault: Callable[..., Fault], soak: bool
) -> None:
    f = fault("15", "large backlog drained under a 128 MB limit")
    backlog = 500_000 if soak else 100_000
    producer = f.produce(backlog, rate=0, seed=115, debug=False)
    f.wait_producers(timeout=600)
    f.acknowledge_from_topic(producer)

    started = time.monotonic()
    consumer = f.consume(memory_limit_mb=CONTAINER_LIMIT_MB)
    limited = consumer.cgroup is not None
    rss = Sampler(lambda: consumer.rss_kb() if consumer.alive() else None, 0.5)
    f.cleared()
    try:
        f.wait_recovered(timeout=900 if soak else 240)
    finally:
        rss.stop()
    drain_s = time.monotonic() - started
    assert consumer.alive(), f"the consumer died draining the backlog:\n{consumer.tail()}"
    if consumer.cgroup is not None:
        assert cgroup_oom_kills(consumer.cgroup) == 0
    samples = [kb for _, kb in rss.samples]
    peak_mb = max(samples) / 1024
    assert peak_mb < CONTAINER_LIMIT_MB, f"RSS peaked at {peak_mb:.0f} MB"
    # Levels off: the second half of the drain needs no more memory than the first.
    half = len(samples) // 2
    growth_mb = (max(samples[half:]) - max(samples[:half])) / 1024
    assert growth_mb < 8, f"RSS grew {growth_mb:.1f} MB in the second half of the drain"
    f.notes.append(
        f"{backlog} in {drain_s:.0f}s ({backlog / drain_s:.0f}/s), peak RSS {peak_mb:.0f} MB"
        + (" in a 128 MB cgroup" if limited else " (no cgroup: RSS checked)")
    )
    f.finish(drain_timeout=300)


@pytest.mark.timeout(2400)
def test_case16_soak_keeps_rss_and_file_descriptors_flat(
    fault: Callable[..., Fault], soak: bool
) -> None:
    f = fault("16", "soak at a high rate")
    duration_s = 1200.0 if soak else 60.0
    rate = 1000 if soak else 800
    producer = f.produce(None, rate=rate, seed=116, debug=False)
    consumer = f.consume()
    f.wait_assigned(consumer)
    f.wait_rows(rate)

    def probe() -> tuple[int, int, int, int] | None:
        values = (producer.rss_kb(), producer.fds(), consumer.rss_kb(), consumer.fds())
        return None if None in values else values  # type: ignore[return-value]

    usage = Sampler(probe, 1.0)
    try:
        f.hold(
            duration_s,
            check=lambda: (
                None
                if producer.alive() and consumer.alive()
                else pytest.fail(f"a process died during the soak:\n{consumer.tail()}")
            ),
        )
    finally:
        usage.stop()
    f.stop_producers()
    f.acknowledge_from_topic(producer)
    samples = [v for _, v in usage.samples]
    third = len(samples) // 3
    assert third >= 5, samples
    middle, last = samples[third : 2 * third], samples[2 * third :]
    for index, name in ((0, "producer"), (2, "consumer")):
        growth_kb = max(s[index] for s in last) - max(s[index] for s in middle)
        assert growth_kb < 4 * 1024, f"{name} RSS grew {growth_kb} kB during the soak"
        fds = max(s[index + 1] for s in last) - max(s[index + 1] for s in middle)
        assert fds <= 2, f"{name} holds {fds} more file descriptors than earlier"
    wait_until(lambda: f.rows() >= len(f.injected_acks), timeout=120, message="the soak drained")
    p_rss = [s[0] // 1024 for s in samples]
    c_rss = [s[2] // 1024 for s in samples]
    f.notes.append(
        f"{duration_s:.0f}s at {rate}/s; producer RSS {min(p_rss)}-{max(p_rss)} MB,"
        f" consumer {min(c_rss)}-{max(c_rss)} MB, fds {samples[-1][1]}/{samples[-1][3]}"
    )
    f.finish()
