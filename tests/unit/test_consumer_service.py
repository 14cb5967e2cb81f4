"""The poll loop's contract, driven by fakes and a simulated clock (no services, no sleeps).

Every fake appends to one shared ``events`` list, so the tests assert the *order* of
effects: the database write, then the DLQ confirmation, then the offset commit.
"""

from __future__ import annotations

import io
import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from sqlalchemy import exc as sa_exc

from foodpipe.consumer.service import ConsumerService, LoopConfig
from foodpipe.db import Conflict, WriteResult
from foodpipe.errors import FatalError, MembershipLost, PoisonMessage
from foodpipe.log import configure_logging
from foodpipe.models import Order
from tests.poison import record, valid_order

TOPIC = "orders"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Msg:
    _partition: int
    _offset: int
    _key: bytes | None
    _value: bytes | None
    _error: KafkaError | None = None
    _topic: str = TOPIC

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, bytes]]:
        return []

    def timestamp(self) -> tuple[int, int]:
        return (1, 0)

    def error(self) -> KafkaError | None:
        return self._error


def msg(partition: int, offset: int, order: Order | None = None, value: bytes | None = None) -> Msg:
    if order is not None:
        key, raw = record(order)
        return Msg(partition, offset, key, raw)
    return Msg(partition, offset, b"CUST-00001", value)


Step = list[Msg] | Callable[[], list[Msg]]


def _key(tp: TopicPartition) -> tuple[str, int]:
    return (tp.topic, tp.partition)


@dataclass
class FakeConsumer:
    """Returns one scripted step per consume() call; stops the service when done."""

    events: list[tuple[Any, ...]]
    clock: Clock
    steps: list[Step] = field(default_factory=list)
    poll_steps: list[Callable[[], Msg | None]] = field(default_factory=list)
    commit_errors: list[BaseException] = field(default_factory=list)
    reports: list[tuple[Any, list[TopicPartition]]] = field(default_factory=list)
    assigned: list[tuple[str, int]] = field(default_factory=list)
    paused: set[tuple[str, int]] = field(default_factory=set)
    service: ConsumerService | None = None
    #: A stalled coordinator: commit outcomes are held back until this is cleared.
    coordinator_silent: bool = False
    callbacks: dict[str, Any] = field(default_factory=dict)
    #: librdkafka keeps a partition's pause when the partition is lost and assigned again.
    pause_survives_rebalance: bool = False
    closed: bool = False
    prefetched: list[Msg] = field(default_factory=list)
    #: The group's committed offsets as the coordinator answers them (none by default),
    #: or the exception its OffsetFetch raises.
    group_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    offsets_error: KafkaException | None = None
    offset_fetches: list[set[int]] = field(default_factory=list)

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self.callbacks = callbacks
        self.assign([(TOPIC, p) for p in range(3)])

    # rebalance helpers, calling the callbacks the way librdkafka does
    def assign(self, partitions: list[tuple[str, int]]) -> None:
        self.callbacks["on_assign"](self, [TopicPartition(t, p) for t, p in partitions])
        self.assigned.extend(partitions)

    def revoke(self, partitions: list[tuple[str, int]], lost: bool = False) -> None:
        callback = self.callbacks["on_lost" if lost else "on_revoke"]
        callback(self, [TopicPartition(t, p) for t, p in partitions])
        self.assigned = [tp for tp in self.assigned if tp not in partitions]
        if not self.pause_survives_rebalance:
            self.paused -= set(partitions)

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Msg]:
        self.serve_reports()
        if timeout == 0:
            # The loop first takes what is already prefetched, without waiting; the
            # scripted steps model what arrives while it waits. Only the overlap tests
            # prefetch (from the writer thread, once a write has started).
            taken, self.prefetched[:num_messages] = self.prefetched[:num_messages], []
            return taken
        self.clock.now += timeout
        if not self.steps:
            assert self.service is not None
            self.service.request_stop()
            return []
        step = self.steps.pop(0)
        messages = step() if callable(step) else step
        return [m for m in messages if (m.topic(), m.partition()) not in self.paused]

    def poll(self, timeout: float = -1) -> Msg | None:
        self.serve_reports()
        self.clock.now += timeout
        self.events.append(("poll",))
        if self.poll_steps:
            return self.poll_steps.pop(0)()
        return None

    def commit(
        self, *, offsets: list[TopicPartition], asynchronous: bool
    ) -> list[TopicPartition] | None:
        if self.commit_errors:
            error = self.commit_errors.pop(0)
            if not asynchronous:
                raise error
            # librdkafka reports an asynchronous commit's outcome during a later poll.
            self.reports.append((error.args[0], offsets))
            return None
        self.events.append(("commit", {(tp.partition, tp.offset) for tp in offsets}))
        if asynchronous:
            self.reports.append((None, offsets))
            return None
        return offsets

    def serve_reports(self) -> None:
        """Deliver commit outcomes, as librdkafka does inside consume() and poll()."""
        assert self.service is not None
        while self.reports and not self.coordinator_silent:
            error, offsets = self.reports.pop(0)
            self.service.on_commit(error, offsets)

    def committed(
        self, partitions: list[TopicPartition], timeout: float = -1
    ) -> list[TopicPartition]:
        self.offset_fetches.append({tp.partition for tp in partitions})
        if self.offsets_error is not None:
            raise self.offsets_error
        return [
            TopicPartition(tp.topic, tp.partition, self.group_offsets.get(_key(tp), -1001))
            for tp in partitions
        ]

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in self.assigned]

    def pause(self, partitions: list[TopicPartition]) -> None:
        new = {(tp.topic, tp.partition) for tp in partitions} - self.paused
        if new:
            self.events.append(("pause", {p for _, p in new}))
        self.paused |= new

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.events.append(("resume", {tp.partition for tp in partitions}))
        self.paused -= {(tp.topic, tp.partition) for tp in partitions}

    def close(self) -> None:
        self.closed = True
        self.events.append(("close",))
        self.revoke(list(self.assigned))


@dataclass
class FakeWriter:
    """Remembers stored orders like the table would; scripted failures per call."""

    events: list[tuple[Any, ...]]
    failures: list[BaseException] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)
    stored: dict[str, Order] = field(default_factory=dict)
    on_write: Callable[[], None] | None = None
    #: Per write call: whether the service handed over a prepared batch.
    prepared_given: list[bool] = field(default_factory=list)

    @staticmethod
    def prepare(batch: Sequence[Order]) -> str:
        return ",".join(o.order_id for o in batch)

    def write(self, batch: Sequence[Order], prepared: str | None = None) -> WriteResult:
        # A prepared batch must be exactly this batch: a stale one would insert rows
        # that are not the ones reported (or miss some).
        assert prepared is None or prepared == self.prepare(batch), (prepared, batch)
        self.prepared_given.append(prepared is not None)
        if self.on_write is not None:
            self.on_write()
        if self.failures:
            self.events.append(("write failed", [o.order_id for o in batch]))
            raise self.failures.pop(0)
        result = WriteResult()
        for index, order in enumerate(batch):
            if order.order_id in self.refuse:
                result.rejected[index] = "refused by a CHECK constraint"
            elif order.order_id in self.stored:
                result.duplicates.append(index)
                if self.stored[order.order_id] != order:
                    result.conflicts.append(Conflict(index, order.order_id, ("items",)))
            else:
                self.stored[order.order_id] = order
                result.inserted.append(index)
        self.events.append(("write", [o.order_id for o in batch]))
        return result


@dataclass
class FakeDLQ:
    events: list[tuple[Any, ...]]
    fail: bool = False
    sent: list[tuple[Msg, PoisonMessage]] = field(default_factory=list)
    _pending: list[tuple[Msg, PoisonMessage]] = field(default_factory=list)

    def send(self, message: Msg, poison: PoisonMessage) -> None:
        self._pending.append((message, poison))

    def flush(self) -> int:
        if self.fail:
            raise FatalError("dead-letter topic d is not writable")
        self.events.append(
            ("dlq", [(m.partition(), m.offset(), p.error_class) for m, p in self._pending])
        )
        self.sent.extend(self._pending)
        count, self._pending = len(self._pending), []
        return count


@dataclass
class Harness:
    events: list[tuple[Any, ...]]
    clock: Clock
    consumer: FakeConsumer
    writer: FakeWriter
    dlq: FakeDLQ
    service: ConsumerService

    def run(self) -> None:
        self.service.run()

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == kind]


def make_harness() -> Harness:
    events: list[tuple[Any, ...]] = []
    clock = Clock()
    consumer = FakeConsumer(events, clock)
    writer = FakeWriter(events)
    dlq = FakeDLQ(events)
    config = LoopConfig(batch_size=500, batch_timeout_s=1.0, poll_slice_s=1.0, fatal_attempts=3)
    service = ConsumerService(consumer, writer, dlq, TOPIC, config, clock=clock)
    consumer.service = service
    return Harness(events, clock, consumer, writer, dlq, service)


@pytest.fixture
def h() -> Harness:
    return make_harness()


def transient() -> sa_exc.OperationalError:
    return sa_exc.OperationalError("INSERT", None, Exception("connection refused"))


def auth_refused() -> sa_exc.OperationalError:
    return sa_exc.OperationalError("INSERT", None, Exception("password authentication failed"))


# ----------------------------------------------------------------------------- the contract


def test_write_then_commit_offset_plus_one_per_partition(h: Harness) -> None:
    h.consumer.steps = [
        [msg(0, 10, valid_order(1)), msg(1, 5, valid_order(2)), msg(0, 11, valid_order(3))]
    ]
    h.run()
    assert h.events[:2] == [
        ("write", ["ORD-20250110-00001", "ORD-20250110-00002", "ORD-20250110-00003"]),
        ("commit", {(0, 12), (1, 6)}),
    ]
    assert h.service.stats.written == 3
    assert h.service.stats.batches == 1
    assert h.consumer.closed


def _write_times(h: Harness) -> list[float]:
    """When each write happened, in seconds since the loop started."""
    start = h.clock.now
    times: list[float] = []
    h.writer.on_write = lambda: times.append(h.clock.now - start)
    h.run()
    return times


def test_a_partial_batch_is_written_after_the_linger_not_the_batch_timeout() -> None:
    h = make_harness()
    h.service._config = LoopConfig(batch_size=500, batch_timeout_s=1.0, batch_linger_s=0.005)
    # One order arrives (after a 0.5 s poll slice), then nothing during the linger.
    h.consumer.steps = [[msg(0, 1, valid_order(1))], [], [msg(0, 2, valid_order(2))]]
    times = _write_times(h)
    assert [e[1] for e in h.of("write")] == [["ORD-20250110-00001"], ["ORD-20250110-00002"]]
    # Written 5 ms after the first order, not 1 s (the batch timeout) after the poll began.
    assert times[0] == pytest.approx(0.505)


def test_orders_arriving_within_the_linger_join_the_batch() -> None:
    h = make_harness()
    h.service._config = LoopConfig(batch_size=500, batch_timeout_s=1.0, batch_linger_s=0.005)
    h.consumer.steps = [[msg(0, 1, valid_order(1))], [msg(1, 1, valid_order(2))], []]
    _write_times(h)
    assert [e[1] for e in h.of("write")] == [["ORD-20250110-00001", "ORD-20250110-00002"]]


def test_a_zero_linger_writes_as_soon_as_nothing_is_prefetched() -> None:
    h = make_harness()
    h.service._config = LoopConfig(batch_size=500, batch_timeout_s=1.0, batch_linger_s=0.0)
    h.consumer.steps = [[msg(0, 1, valid_order(1))], [msg(0, 2, valid_order(2))]]
    times = _write_times(h)
    assert [e[1] for e in h.of("write")] == [["ORD-20250110-00001"], ["ORD-20250110-00002"]]
    assert times[0] == pytest.approx(0.5)


def test_poison_goes_to_the_dlq_before_the_commit_and_valid_neighbours_are_written(
    h: Harness,
) -> None:
    h.consumer.steps = [
        [
            msg(0, 0, valid_order(1)),
            msg(0, 1, value=b"{broken"),
            msg(0, 2, valid_order(2)),
            Msg(1, 0, None, None),  # tombstone
        ]
    ]
    h.run()
    assert h.events[:3] == [
        ("write", ["ORD-20250110-00001", "ORD-20250110-00002"]),
        ("dlq", [(0, 1, "json_invalid"), (1, 0, "empty_value")]),
        ("commit", {(0, 3), (1, 1)}),
    ]
    assert h.service.stats.dead_lettered == 2
    assert h.service.stats.dead_lettered_by_class == {"json_invalid": 1, "empty_value": 1}


def test_a_batch_of_only_poison_needs_no_database(h: Harness) -> None:
    h.writer.failures = [transient()]  # would fail if it were called
    h.consumer.steps = [[msg(2, 7, value=b"[]")]]
    h.run()
    assert h.of("write failed") == []
    assert h.of("commit") == [("commit", {(2, 8)})]


def test_a_row_refused_by_the_database_is_dead_lettered_the_rest_written(h: Harness) -> None:
    h.writer.refuse = {"ORD-20250110-00002"}
    h.consumer.steps = [
        [msg(0, 0, valid_order(1)), msg(0, 1, valid_order(2)), msg(0, 2, valid_order(3))]
    ]
    h.run()
    assert h.of("dlq") == [("dlq", [(0, 1, "db_constraint")])]
    assert h.of("commit") == [("commit", {(0, 3)})]
    assert h.service.stats.written == 2
    assert h.dlq.sent[0][1].reason == "refused by a CHECK constraint"


def test_duplicates_and_conflicts_are_counted(h: Harness) -> None:
    h.writer.stored["ORD-20250110-00001"] = valid_order(1)
    h.writer.stored["ORD-20250110-00002"] = valid_order(2, status="delivered")
    h.consumer.steps = [
        [msg(0, 0, valid_order(1)), msg(0, 1, valid_order(2)), msg(0, 2, valid_order(3))]
    ]
    h.run()
    assert h.service.stats.duplicates == 2
    assert h.service.stats.conflicts == 1
    assert h.service.stats.written == 1
    assert h.of("commit") == [("commit", {(0, 3)})]


def test_dlq_unwritable_is_fatal_and_nothing_of_the_batch_is_committed(h: Harness) -> None:
    h.dlq.fail = True
    h.consumer.steps = [[msg(0, 0, valid_order(1)), msg(0, 1, value=b"x")]]
    with pytest.raises(FatalError, match="not writable"):
        h.run()
    assert h.of("commit") == []
    assert h.consumer.closed  # the group is left promptly even on a fatal error


def test_messages_of_a_partition_no_longer_owned_are_not_processed(h: Harness) -> None:
    def revoke_then_return_stale() -> list[Msg]:
        h.consumer.revoke([(TOPIC, 2)])
        return [msg(2, 0, valid_order(1)), msg(0, 0, valid_order(2))]

    h.consumer.steps = [revoke_then_return_stale]
    h.run()
    assert h.of("write") == [("write", ["ORD-20250110-00002"])]
    assert h.of("commit") == [("commit", {(0, 1)})]
    assert h.service.stats.dropped_on_revoke == 1


def test_kafka_error_events_are_skipped_and_fatal_ones_stop(h: Harness) -> None:
    h.consumer.steps = [
        [Msg(0, 0, None, None, KafkaError(KafkaError._TRANSPORT)), msg(0, 1, valid_order(1))]
    ]
    h.run()
    assert h.of("commit") == [("commit", {(0, 2)})]

    h2_events: list[tuple[Any, ...]] = []
    clock = Clock()
    consumer = FakeConsumer(h2_events, clock)
    consumer.steps = [[Msg(0, 0, None, None, KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))]]
    service = ConsumerService(
        consumer, FakeWriter(h2_events), FakeDLQ(h2_events), TOPIC, clock=clock
    )
    consumer.service = service
    with pytest.raises(FatalError, match="Kafka refused the consumer"):
        service.run()


# ----------------------------------------------------------------------------- transient errors


def test_transient_db_error_pauses_polls_retries_the_same_batch_then_resumes(h: Harness) -> None:
    h.writer.failures = [transient(), transient(), transient()]
    batch = [msg(0, 0, valid_order(1)), msg(1, 0, valid_order(2))]
    h.consumer.steps = [batch]
    h.run()
    kinds = [e[0] for e in h.events]
    first_commit = kinds.index("commit")
    # nothing committed before the successful write
    assert kinds[:first_commit].count("write") == 1
    assert kinds[:first_commit].count("write failed") == 3
    assert ("pause", {0, 1, 2}) in h.events[:first_commit]
    assert "poll" in kinds[:first_commit]  # group membership kept while waiting
    # written, partitions resumed, and only then the offsets committed
    assert h.events[first_commit - 2 : first_commit + 1] == [
        ("write", ["ORD-20250110-00001", "ORD-20250110-00002"]),
        ("resume", {0, 1, 2}),
        ("commit", {(0, 1), (1, 1)}),
    ]
    # the same batch, every time
    writes = [e[1] for e in h.events if e[0] in ("write", "write failed")]
    assert all(w == writes[0] for w in writes)
    assert h.service.stats.db_retries == 3


def test_backoff_doubles_while_the_database_stays_down(h: Harness) -> None:
    h.writer.failures = [transient() for _ in range(8)]
    times: list[float] = []
    h.writer.on_write = lambda: times.append(h.clock.now)
    h.consumer.steps = [[msg(0, 0, valid_order(1))]]
    h.run()
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # 0.5 s doubling to the 30 s cap, each jittered down by at most 20 %, polled in 1 s slices
    assert gaps[0] < 1.1
    assert gaps[-1] >= 24.0
    assert all(gap <= 31.0 for gap in gaps)
    assert h.service.stats.written == 1


def test_fatal_db_error_stops_after_a_few_attempts_without_commit(h: Harness) -> None:
    h.writer.failures = [auth_refused() for _ in range(5)]
    h.consumer.steps = [[msg(0, 0, valid_order(1))]]
    with pytest.raises(FatalError, match="database refused the batch 3 times"):
        h.run()
    assert h.of("commit") == []
    assert len(h.of("write failed")) == 3


def test_a_bug_in_the_writer_is_not_retried_or_hidden(h: Harness) -> None:
    h.writer.failures = [TypeError("a bug")]
    h.consumer.steps = [[msg(0, 0, valid_order(1))]]
    with pytest.raises(TypeError):
        h.run()
    assert h.of("commit") == []


def test_stop_while_waiting_for_the_database_abandons_the_batch_uncommitted(h: Harness) -> None:
    h.writer.failures = [transient() for _ in range(100)]
    h.consumer.poll_steps = [lambda: None, lambda: (h.service.request_stop(), None)[1]]
    h.consumer.steps = [[msg(0, 0, valid_order(1))]]
    h.run()
    assert h.of("commit") == []
    assert h.service.stats.abandoned == 1
    assert h.consumer.closed


def test_revoke_while_waiting_drops_only_the_revoked_partitions_messages(h: Harness) -> None:
    h.writer.failures = [transient()]

    def revoke_partition_1() -> None:
        h.consumer.revoke([(TOPIC, 1)])

    h.consumer.poll_steps = [lambda: (revoke_partition_1(), None)[1]]
    h.consumer.steps = [
        [msg(0, 0, valid_order(1)), msg(1, 0, valid_order(2)), msg(1, 1, value=b"x")]
    ]
    h.run()
    assert h.of("write") == [("write", ["ORD-20250110-00001"])]
    assert h.of("dlq") == []  # the revoked partition's poison is its next owner's business
    assert h.of("commit") == [("commit", {(0, 1)})]
    assert h.service.stats.dropped_on_revoke == 2


def test_lost_while_waiting_drops_and_commits_nothing_for_lost_partitions(h: Harness) -> None:
    h.writer.failures = [transient()]
    h.consumer.poll_steps = [
        lambda: (h.consumer.revoke([(TOPIC, 0), (TOPIC, 1)], lost=True), None)[1]
    ]
    h.consumer.steps = [[msg(0, 0, valid_order(1)), msg(2, 0, valid_order(2))]]
    h.run()
    assert h.of("write") == [("write", ["ORD-20250110-00002"])]
    assert h.of("commit") == [("commit", {(2, 1)})]
    assert h.service.assigned == set()  # close() revoked the rest


def test_a_partition_assigned_while_waiting_is_paused_and_its_messages_kept(h: Harness) -> None:
    h.consumer.assigned = []
    h.consumer.subscribe = lambda topics, **cb: (  # type: ignore[method-assign]
        h.consumer.callbacks.update(cb),
        h.consumer.assign([(TOPIC, 0)]),
    )[0]
    h.writer.failures = [transient()]
    early = msg(1, 0, valid_order(9))

    def assign_partition_1() -> Msg:
        h.consumer.assign([(TOPIC, 1)])
        return early  # arrived before we could pause it

    h.consumer.poll_steps = [assign_partition_1]
    h.consumer.steps = [[msg(0, 0, valid_order(1))]]
    h.run()
    assert ("pause", {1}) in h.events
    assert h.of("write") == [
        ("write", ["ORD-20250110-00001"]),
        ("write", ["ORD-20250110-00009"]),
    ]
    assert h.of("commit") == [("commit", {(0, 1)}), ("commit", {(1, 1)})]


def test_a_stale_start_below_the_groups_committed_offset_is_skipped_not_recommitted(
    h: Harness,
) -> None:
    # tests/fault/network case 5: partition 0 came back to a member that had owned it
    # before, and the client started it at offset 0 although the group had committed 8215.
    h.consumer.group_offsets = {(TOPIC, 0): 8215}
    h.consumer.steps = [
        [msg(0, 0, value=b"x"), msg(0, 1, valid_order(1)), msg(1, 3, valid_order(2))],
        [msg(0, 8214, valid_order(3)), msg(0, 8215, valid_order(4))],
    ]
    h.run()
    assert h.consumer.offset_fetches == [{0, 1, 2}]
    # Nothing below 8215 is written, dead-lettered or committed; the rest goes on as usual.
    assert h.of("write") == [("write", ["ORD-20250110-00002"]), ("write", ["ORD-20250110-00004"])]
    assert h.of("dlq") == []
    assert h.of("commit") == [("commit", {(1, 4)}), ("commit", {(0, 8216)})]
    assert h.service.stats.skipped_committed == 3
    assert h.service.stats.consumed == 2


def test_without_the_committed_offsets_the_partitions_are_consumed_unguarded() -> None:
    out = io.StringIO()
    configure_logging("INFO", "json", stream=out)
    h = make_harness()
    h.consumer.offsets_error = KafkaException(KafkaError(KafkaError._TIMED_OUT))
    h.consumer.steps = [[msg(0, 0, valid_order(1))]]
    h.run()
    assert h.of("commit") == [("commit", {(0, 1)})]
    assert "could not read the committed offsets" in out.getvalue()


def test_the_floor_goes_with_the_partition(h: Harness) -> None:
    # Revoked, then the group's offset is reset (an operator replays): the next
    # assignment reads the floor afresh rather than keeping the old one.
    h.consumer.group_offsets = {(TOPIC, 0): 50}

    def revoke_reset_assign() -> list[Msg]:
        h.consumer.revoke([(TOPIC, 0)])
        h.consumer.group_offsets = {(TOPIC, 0): 0}
        h.consumer.assign([(TOPIC, 0)])
        return [msg(0, 0, valid_order(2))]

    h.consumer.steps = [[msg(0, 50, valid_order(1))], revoke_reset_assign]
    h.run()
    assert h.of("write") == [("write", ["ORD-20250110-00001"]), ("write", ["ORD-20250110-00002"])]
    assert h.service.stats.skipped_committed == 0


# ----------------------------------------------------------------------------- offset commits


def test_one_commit_in_flight_at_a_time_the_next_carries_the_latest_offsets(
    h: Harness,
) -> None:
    def answer() -> list[Msg]:
        h.consumer.coordinator_silent = False
        return [msg(0, 3, valid_order(3))]

    h.consumer.coordinator_silent = True
    h.consumer.steps = [
        [msg(0, 1, valid_order(1))],
        [],
        [msg(0, 2, valid_order(2))],
        [],
        answer,
        [],
    ]
    h.run()
    # Batch 2 was written while batch 1's commit had no answer: its offset waited, and
    # went out with the next commit after the answer, which carried offset 3 already.
    commits = [e[1] for e in h.of("commit")]
    assert commits[:2] == [{(0, 2)}, {(0, 4)}]
    assert [e[1] for e in h.of("write")] == [
        ["ORD-20250110-00001"],
        ["ORD-20250110-00002"],
        ["ORD-20250110-00003"],
    ]


# ------------------------------------------------------------------- two batches in flight


@dataclass
class HeldWrite:
    """Holds the first write on the writer thread until the test releases it.

    While it is held, the next batch is already prefetched, so the loop gathers and
    validates it: two batches in flight, one being written, one waiting for it.
    """

    h: Harness
    next_batch: list[Msg]
    started: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    calls: int = 0

    def __call__(self) -> None:
        self.calls += 1
        if self.calls == 1:
            self.h.consumer.prefetched.extend(self.next_batch)
            self.started.set()
            assert self.release.wait(10), "the test never released the held write"

    def both_in_flight(self) -> None:
        """Called inside the loop's consume(): batch 2 gathered while batch 1 is written."""
        assert self.started.wait(10), "the first write never started"
        assert not self.h.of("write"), "the first write finished before batch 2 was gathered"
        assert not self.h.of("commit")
        assert [m.offset() for m in self.h.service._incoming] == [
            m.offset() for m in self.next_batch
        ]


def assert_written_then_committed(
    h: Harness, batches: list[tuple[list[str], set[tuple[int, int]]]]
) -> None:
    """Each batch's write, then its offsets' commit; batches, and commits, in order.

    Batch n+1 goes to the writer thread as soon as batch n is written, while batch n's
    offsets are committed on the loop's thread: those two may come in either order, so
    only the orders that the contract promises are checked.
    """
    writes = [e for e in h.events if e[0] == "write"]
    commits = [e for e in h.events if e[0] == "commit"]
    assert writes == [("write", ids) for ids, _ in batches]
    assert commits == [("commit", offsets) for _, offsets in batches]
    for write, commit in zip(writes, commits, strict=True):
        assert h.events.index(write) < h.events.index(commit), h.events


def test_the_next_batch_is_gathered_while_the_previous_is_written_offsets_in_order(
    h: Harness,
) -> None:
    held = HeldWrite(h, [msg(0, 2, valid_order(2)), msg(1, 7, valid_order(3))])
    h.writer.on_write = held

    def check_then_release() -> list[Msg]:
        held.both_in_flight()
        held.release.set()
        return []

    h.consumer.steps = [[msg(0, 1, valid_order(1))], check_then_release]
    h.run()
    assert_written_then_committed(
        h,
        [
            (["ORD-20250110-00001"], {(0, 2)}),
            (["ORD-20250110-00002", "ORD-20250110-00003"], {(0, 3), (1, 8)}),
        ],
    )
    # Batch 2 was serialised on the loop's thread while batch 1 was written.
    assert h.writer.prepared_given == [True, True]


def test_the_next_batch_goes_to_the_writer_before_the_previous_ones_bookkeeping(
    h: Harness,
) -> None:
    # Batch 1 holds poison: its dead letters are sent and confirmed after its write. By
    # then batch 2 must already be on the writer thread (the database does not wait for
    # the loop's bookkeeping), and batch 1's offsets are committed all the same.
    held = HeldWrite(h, [msg(0, 2, valid_order(2))])
    h.writer.on_write = held
    writing_at_dead_letter: list[list[str]] = []

    def flush_and_look() -> int:
        write = h.service._write
        writing_at_dead_letter.append(
            [e.order.order_id for e in write.valid if e.order] if write else []
        )
        return FakeDLQ.flush(h.dlq)

    h.dlq.flush = flush_and_look  # type: ignore[method-assign]

    def release() -> list[Msg]:
        held.both_in_flight()
        held.release.set()
        return []

    h.consumer.steps = [[msg(0, 0, value=b"{broken"), msg(0, 1, valid_order(1))], release]
    h.run()
    assert writing_at_dead_letter == [["ORD-20250110-00002"]]
    assert h.of("dlq") == [("dlq", [(0, 0, "json_invalid")])]
    assert_written_then_committed(
        h, [(["ORD-20250110-00001"], {(0, 2)}), (["ORD-20250110-00002"], {(0, 3)})]
    )
    # The dead letter is confirmed before the offsets that pass it are committed.
    assert h.events.index(h.of("dlq")[0]) < h.events.index(h.of("commit")[0])


def test_a_dead_letter_failure_after_the_hand_over_commits_neither_batch(h: Harness) -> None:
    held = HeldWrite(h, [msg(0, 2, valid_order(2))])
    h.writer.on_write = held
    h.dlq.fail = True

    def release() -> list[Msg]:
        held.both_in_flight()
        held.release.set()
        return []

    h.consumer.steps = [[msg(0, 0, value=b"{broken"), msg(0, 1, valid_order(1))], release]
    with pytest.raises(FatalError, match="not writable"):
        h.run()
    # Batch 2 was handed over and may be written (harmless: idempotent, redelivered),
    # but no offset passes the poison that never reached the DLQ.
    assert h.of("commit") == []
    assert h.consumer.closed


def test_revoke_with_two_batches_in_flight_commits_the_written_drops_the_rest(
    h: Harness,
) -> None:
    held = HeldWrite(h, [msg(0, 2, valid_order(2)), msg(1, 7, valid_order(3))])
    h.writer.on_write = held

    def revoke_partition_0() -> list[Msg]:
        held.both_in_flight()
        held.release.set()
        # The callback waits for batch 1 (partition 0 is in it) and commits it while the
        # partition is still ours; batch 2's message of partition 0 is dropped, unwritten.
        h.consumer.revoke([(TOPIC, 0)])
        return []

    h.consumer.steps = [[msg(0, 1, valid_order(1))], revoke_partition_0]
    h.run()
    assert [e for e in h.events if e[0] in ("write", "commit")] == [
        ("write", ["ORD-20250110-00001"]),
        ("commit", {(0, 2)}),
        ("write", ["ORD-20250110-00003"]),
        ("commit", {(1, 8)}),
    ]
    assert "ORD-20250110-00002" not in h.writer.stored
    assert h.service.stats.dropped_on_revoke == 1
    # The revoke came before batch 2 was decoded: what was serialised is what is written.
    assert h.writer.prepared_given == [True, True]


def test_a_batch_validated_before_its_partition_came_back_is_held_to_the_new_floor(
    h: Harness,
) -> None:
    # Batch 1 fails on the database; batch 2 (partition 0 at offset 11) is validated
    # meanwhile. During the retry partition 0 goes to another member, which gets to 500,
    # and comes back. Committing 12 for batch 2 would move the group back by 488.
    held = HeldWrite(h, [msg(0, 11, valid_order(3)), msg(1, 1, valid_order(4))])
    h.writer.on_write = held
    h.writer.failures = [transient()]

    def release() -> list[Msg]:
        held.both_in_flight()
        held.release.set()
        return []

    def away_and_back() -> None:
        h.consumer.revoke([(TOPIC, 0)])
        h.consumer.group_offsets = {(TOPIC, 0): 500}
        h.consumer.assign([(TOPIC, 0)])

    h.consumer.poll_steps = [lambda: (away_and_back(), None)[1]]
    h.consumer.steps = [
        [msg(0, 10, valid_order(1)), msg(1, 0, valid_order(2))],
        release,
        [msg(0, 500, valid_order(5))],
    ]
    h.run()
    assert h.of("write") == [
        ("write", ["ORD-20250110-00002"]),  # batch 1 again, without the revoked partition
        ("write", ["ORD-20250110-00004"]),  # batch 2, held to the new floor
        ("write", ["ORD-20250110-00005"]),
    ]
    assert [o for e in h.of("commit") for p, o in e[1] if p == 0] == [501]
    assert h.service.stats.skipped_committed == 1
    # Batch 2 changed after it was serialised: the writer serialised it again itself
    # (the fake writer also checks that every prepared batch matches what it writes).
    assert h.writer.prepared_given == [True, False, False, True]


def test_lost_with_two_batches_in_flight_commits_nothing_for_the_lost_partition(
    h: Harness,
) -> None:
    held = HeldWrite(h, [msg(0, 2, valid_order(2)), msg(1, 7, valid_order(3))])
    h.writer.on_write = held

    def lose_partition_0() -> list[Msg]:
        held.both_in_flight()
        # Lost while batch 1 is still being written: no waiting (the partition is someone
        # else's already), and nothing of it may be committed, even once it is written.
        h.consumer.revoke([(TOPIC, 0)], lost=True)
        held.release.set()
        return []

    h.consumer.steps = [[msg(0, 1, valid_order(1))], lose_partition_0]
    h.run()
    assert [e for e in h.events if e[0] in ("write", "commit")] == [
        ("write", ["ORD-20250110-00001"]),  # written anyway: harmless, the insert is idempotent
        ("write", ["ORD-20250110-00003"]),
        ("commit", {(1, 8)}),
    ]
    assert h.service.stats.dropped_on_revoke == 2


def test_stop_with_two_batches_in_flight_writes_and_commits_both_in_order(h: Harness) -> None:
    held = HeldWrite(h, [msg(0, 2, valid_order(2))])
    h.writer.on_write = held

    def stop() -> list[Msg]:
        held.both_in_flight()
        h.service.request_stop()
        held.release.set()
        return []

    h.consumer.steps = [[msg(0, 1, valid_order(1))], stop]
    h.run()
    assert_written_then_committed(
        h, [(["ORD-20250110-00001"], {(0, 2)}), (["ORD-20250110-00002"], {(0, 3)})]
    )


def test_a_failed_write_on_the_writer_thread_is_retried_before_the_next_batch(
    h: Harness,
) -> None:
    held = HeldWrite(h, [msg(0, 2, valid_order(2))])
    h.writer.on_write = held
    h.writer.failures = [transient()]

    def release() -> list[Msg]:
        assert held.started.wait(10), "the first write never started"
        held.release.set()  # the first attempt now fails, on the writer thread
        return []

    h.consumer.steps = [[msg(0, 1, valid_order(1))], release]
    h.run()
    assert h.events[0] == ("write failed", ["ORD-20250110-00001"])
    # The same batch again, before batch 2.
    assert_written_then_committed(
        h, [(["ORD-20250110-00001"], {(0, 2)}), (["ORD-20250110-00002"], {(0, 3)})]
    )
    assert h.service.stats.db_retries == 1


def test_stop_while_retrying_abandons_both_batches_and_commits_neither(h: Harness) -> None:
    held = HeldWrite(h, [msg(0, 2, valid_order(2))])
    h.writer.on_write = held
    h.writer.failures = [transient()]

    def release() -> list[Msg]:
        assert held.started.wait(10), "the first write never started"
        held.release.set()  # the first attempt fails; the stop comes during the retry wait
        return []

    h.consumer.steps = [[msg(0, 1, valid_order(1))], release]
    h.consumer.poll_steps = [h.service.request_stop]  # the stop comes during the retry wait
    h.run()
    # Batch 2 came after the unwritten batch 1: committing it would skip batch 1.
    assert h.of("write") == []
    assert h.of("commit") == []
    assert h.service.stats.abandoned == 2


def test_a_commit_never_answered_is_sent_again_after_a_while(h: Harness) -> None:
    h.consumer.coordinator_silent = True
    quiet: list[Step] = [[] for _ in range(200)]  # 200 polls of 0.5 s: 100 s
    h.consumer.steps = [[msg(0, 1, valid_order(1))], [], [msg(0, 2, valid_order(2))], *quiet]
    h.run()
    # The first commit is never answered; after _COMMIT_ANSWER_S (90 s) of polling the
    # newer offset goes out asynchronously, and once more, synchronously, at shutdown
    # (that one too is unanswered by the silent coordinator).
    assert [e[1] for e in h.of("commit")] == [{(0, 2)}, {(0, 3)}, {(0, 3)}]


def _quiet(seconds: float) -> list[Step]:
    return [[] for _ in range(int(seconds / 0.5))]  # each empty poll waits a 0.5 s slice


def test_a_member_that_never_gets_back_into_the_group_stops_with_a_fatal_error(
    h: Harness,
) -> None:
    h.service._config = LoopConfig(rejoin_timeout_s=60.0)

    def lost() -> list[Msg]:
        h.consumer.revoke(list(h.consumer.assigned), lost=True)
        return []

    h.consumer.steps = [[msg(0, 1, valid_order(1))], lost, *_quiet(70)]
    with pytest.raises(MembershipLost, match=r"lost its partitions 6[0-9]s ago"):
        h.run()
    # close() would block on the wedged coordinator connection: the client is abandoned.
    assert not h.consumer.closed
    assert not h.of("commit")


def test_a_member_taken_back_into_the_group_keeps_running(h: Harness) -> None:
    h.service._config = LoopConfig(rejoin_timeout_s=60.0)

    def lost() -> list[Msg]:
        h.consumer.revoke(list(h.consumer.assigned), lost=True)
        return []

    def back() -> list[Msg]:
        h.consumer.assign([(TOPIC, p) for p in range(3)])
        return []

    h.consumer.steps = [lost, *_quiet(50), back, *_quiet(70), [msg(0, 1, valid_order(1))]]
    h.run()
    assert [e[1] for e in h.of("write")] == [["ORD-20250110-00001"]]


def test_a_partition_lost_while_paused_is_fetched_again_when_it_comes_back(h: Harness) -> None:
    # tests/fault/network case 1: paused for a database retry, lost, assigned back much
    # later; librdkafka still had it paused and it was never fetched again.
    h.consumer.pause_survives_rebalance = True
    h.writer.failures = [transient()]

    def lost() -> None:
        # During the retry's backoff (the loop polls, paused).
        h.consumer.revoke(list(h.consumer.assigned), lost=True)

    def back() -> list[Msg]:
        h.consumer.assign([(TOPIC, p) for p in range(3)])
        return []

    h.consumer.poll_steps = [lost]
    h.consumer.steps = [
        [msg(0, 0, valid_order(1))],
        *_quiet(5),
        back,
        *_quiet(3),
        [msg(0, 0, valid_order(1)), msg(1, 0, valid_order(2))],
    ]
    h.run()
    assert ("resume", {0, 1, 2}) in h.events
    # The lost batch was dropped unwritten; what arrived after the reassignment is
    # written (without the resume it was filtered out as paused, for ever).
    assert h.of("write") == [("write", ["ORD-20250110-00001", "ORD-20250110-00002"])]
    assert h.of("commit")[-1] == ("commit", {(0, 1), (1, 1)})


def test_a_failed_commit_is_retried_on_the_next_iteration(h: Harness) -> None:
    h.consumer.commit_errors = [KafkaException(KafkaError(KafkaError.COORDINATOR_NOT_AVAILABLE))]
    h.consumer.steps = [[msg(0, 0, valid_order(1))], []]
    h.run()
    assert h.of("commit") == [("commit", {(0, 1)})]
    assert h.service.stats.commit_failures == 1


def test_a_failed_commit_is_retried_on_revoke_while_we_still_own_the_partition(
    h: Harness,
) -> None:
    h.consumer.commit_errors = [KafkaException(KafkaError(KafkaError.REBALANCE_IN_PROGRESS))]
    h.consumer.steps = [
        [msg(0, 4, valid_order(1))],
        lambda: (h.consumer.revoke([(TOPIC, 0)]), [])[1],
    ]
    h.run()
    assert h.of("commit")[0] == ("commit", {(0, 5)})


def test_a_fatal_commit_error_stops(h: Harness) -> None:
    h.consumer.commit_errors = [KafkaException(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED))]
    h.consumer.steps = [[msg(0, 0, valid_order(1))]]
    with pytest.raises(FatalError, match="offset commit refused"):
        h.run()


def test_stop_during_a_batch_finishes_and_commits_it(h: Harness) -> None:
    def stop_then_deliver() -> list[Msg]:
        h.service.request_stop()
        return [msg(0, 0, valid_order(1))]

    h.consumer.steps = [stop_then_deliver, [msg(0, 1, valid_order(2))]]
    h.run()
    assert h.of("write") == [("write", ["ORD-20250110-00001"])]
    assert h.of("commit") == [("commit", {(0, 1)})]
    assert h.events[-1][0] == "close"


def test_summary_is_logged_every_interval() -> None:
    # A stream of its own, not pytest's captured stdout: that one is closed after the
    # test, and every later test's log line would fail on it.
    out = io.StringIO()
    configure_logging("INFO", "json", stream=out)
    h = make_harness()
    h.consumer.steps = [[msg(0, 0, valid_order(1))]] + [[] for _ in range(12)]
    h.run()
    lines = [line for line in out.getvalue().splitlines() if '"consumer stats"' in line]
    assert len(lines) >= 2
    assert '"written": 1' in lines[-1]
    assert '"batch_p99_ms"' in lines[-1]
