"""The consumer holds one bounded batch in memory, whatever the input.

Found by the fault suite (tests/integration/test_security.py, hostile input): 90
near-limit (900 KB) poison messages took the consumer from 75 MB to 160-200 MB, past
the 128 MB container limit. Three causes, each pinned here:

1. a ``consume()`` that waits keeps collecting while librdkafka fetches more, so the
   prefetch bounds never applied to a batch: 500 near-limit messages are ~500 MB;
2. a dead-lettered message's exception kept its traceback, whose frame held the batch:
   a reference cycle, so whole batches lived until the cyclic GC ran;
3. the run loop still referenced the previous batch while gathering the next one.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from foodpipe.consumer.service import ConsumerService, LoopConfig
from tests.poison import record, valid_order
from tests.unit.test_consumer_service import Clock, FakeDLQ, FakeWriter, Msg

MB = 1024 * 1024
NEAR_LIMIT = b"x" * (900 * 1024)


@dataclass
class BacklogConsumer:
    """An endless backlog of near-limit poison on partition 0.

    A call that waits returns as many messages as asked (they keep arriving while it
    waits); a call that does not wait returns what a bounded prefetch queue holds.
    """

    clock: Clock
    prefetched: int = 4
    batches_to_serve: int = 3
    calls: list[tuple[int, float]] = field(default_factory=list)
    offset: int = 0
    service: ConsumerService | None = None
    callbacks: dict[str, Any] = field(default_factory=dict)
    assigned: list[Any] = field(default_factory=list)

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        from confluent_kafka import TopicPartition

        self.callbacks = callbacks
        self.assigned = [TopicPartition("orders", 0)]
        callbacks["on_assign"](self, self.assigned)

    def _take(self, count: int) -> list[Msg]:
        messages = [Msg(0, self.offset + i, b"CUST-00001", NEAR_LIMIT) for i in range(count)]
        self.offset += count
        return messages

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Msg]:
        self.calls.append((num_messages, timeout))
        assert self.service is not None
        if self.service.stats.batches >= self.batches_to_serve:
            self.service.request_stop()
            return []
        if timeout == 0:
            return self._take(min(num_messages, self.prefetched))
        self.clock.now += min(timeout, 0.01)
        return self._take(num_messages)

    def poll(self, timeout: float = -1) -> None:
        return None

    def commit(self, *, offsets: list[Any], asynchronous: bool) -> list[Any]:
        return offsets

    def committed(self, partitions: list[Any], timeout: float = -1) -> list[Any]:
        return []  # no committed offsets: nothing to hold the partitions to

    def assignment(self) -> list[Any]:
        return self.assigned

    def pause(self, partitions: list[Any]) -> None: ...

    def resume(self, partitions: list[Any]) -> None: ...

    def close(self) -> None: ...


@pytest.fixture
def no_cyclic_gc() -> Iterator[None]:
    """Only reference counting frees memory: a cycle shows up as a leak."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def make(consumer: Any, clock: Clock, **config: Any) -> tuple[ConsumerService, FakeDLQ]:
    events: list[tuple[Any, ...]] = []
    dlq = FakeDLQ(events)
    service = ConsumerService(
        consumer,
        FakeWriter(events),
        dlq,
        "orders",
        LoopConfig(batch_size=500, batch_timeout_s=1.0, poll_slice_s=0.5, **config),
        clock=clock,
    )
    consumer.service = service
    return service, dlq


def test_a_batch_of_near_limit_messages_stops_at_the_byte_budget() -> None:
    clock = Clock()
    consumer = BacklogConsumer(clock)
    service, dlq = make(consumer, clock, batch_max_bytes=8 * MB)
    service.run()
    sizes = [len(batch) for batch in _batches(dlq)]
    # The stop comes once batches_to_serve batches are settled; by then the next one is
    # already on the writer thread (the loop validates batch n+1 while n is written), and
    # a stop lets it finish.
    assert len(sizes) == consumer.batches_to_serve + 1
    assert sizes, "nothing was processed"
    # 8 MB of budget is 9 messages of 900 KB; the last non-waiting call may add at most
    # what the prefetch queue holds (4). Before the fix: 500 messages, ~450 MB.
    assert max(sizes) * len(NEAR_LIMIT) <= 8 * MB + consumer.prefetched * len(NEAR_LIMIT)
    # A call that waits never asks for more than one message: it cannot accumulate.
    assert all(num == 1 for num, timeout in consumer.calls if timeout != 0), consumer.calls


def _batches(dlq: FakeDLQ) -> list[list[Any]]:
    """The dead letters of each flush, i.e. of each batch (all of them are poison here)."""
    return [list(event[1]) for event in dlq.events if event[0] == "dlq"]


def test_dead_lettered_messages_are_freed_without_the_cyclic_gc(no_cyclic_gc: None) -> None:
    clock = Clock()
    alive: list[weakref.ref[Msg]] = []

    @dataclass
    class OneBatch(BacklogConsumer):
        served: bool = False

        def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Msg]:
            assert self.service is not None
            if self.served:
                self.service.request_stop()
                return []
            self.served = True
            messages = [
                Msg(0, 0, b"CUST-00001", b"not json"),
                Msg(0, 1, *record(valid_order(1))),
                Msg(0, 2, b"CUST-00001", NEAR_LIMIT),
            ]
            alive.extend(weakref.ref(m) for m in messages)
            return messages

    consumer = OneBatch(clock)
    service, dlq = make(consumer, clock)
    service.run()
    assert service.stats.dead_lettered == 2
    dlq.sent.clear()  # the fake DLQ keeps what it "sent"; the real one does not
    dlq.events.clear()
    assert [ref() for ref in alive] == [None, None, None], "a cycle keeps the batch alive"


def test_the_previous_batch_is_released_before_the_next_is_gathered(
    no_cyclic_gc: None,
) -> None:
    clock = Clock()
    first_batch: list[weakref.ref[Msg]] = []
    still_alive_while_gathering: list[int] = []

    @dataclass
    class TwoBatches(BacklogConsumer):
        def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Msg]:
            assert self.service is not None
            if timeout == 0:
                return []
            clock.now += 2.0  # each waiting call ends its batch
            if not first_batch:
                messages = [Msg(0, i, *record(valid_order(i + 1))) for i in range(3)]
                first_batch.extend(weakref.ref(m) for m in messages)
                return messages
            still_alive_while_gathering.append(sum(ref() is not None for ref in first_batch))
            self.service.request_stop()
            return []

    consumer = TwoBatches(clock)
    service, _dlq = make(consumer, clock)
    service.run()
    assert service.stats.written == 3
    assert still_alive_while_gathering == [0]
