"""The produce loop against a fake Kafka producer and a simulated clock.

The fake behaves like librdkafka where it matters: ``produce`` raises ``BufferError``
when its bounded queue is full, delivery reports are served only from ``poll``, and a
``poll`` with nothing to report waits out its timeout (on the simulated clock).
"""

from __future__ import annotations

import io
import itertools
import json
import os
import signal
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from rich.console import Console

from foodpipe.log import configure_logging
from foodpipe.models import Order, kafka_headers
from foodpipe.producer.generator import OrderGenerator
from foodpipe.producer.ids import OrderIdAllocator, OrderIdError
from foodpipe.producer.ratelimit import RateLimiter
from foodpipe.producer.report import LogReporter, ProgressReporter
from foodpipe.producer.service import (
    OrderProducer,
    ProduceResult,
    is_transient,
    order_id_of,
    stop_on_signals,
)
from foodpipe.producer.stats import ProducerStats

TOPIC = "orders-test"
EPOCH = datetime(2025, 1, 10, 12, 0, tzinfo=UTC)

Outcome = Callable[[bytes, int], KafkaError | None]


class SimClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def wall(self) -> datetime:
        return EPOCH + timedelta(seconds=self.t)


class FakeMessage:
    def __init__(self, topic: str, key: bytes, value: bytes, partition: int, offset: int):
        self._topic, self._key, self._value = topic, key, value
        self._partition, self._offset = partition, offset

    def topic(self) -> str:
        return self._topic

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


class FakeProducer:
    """A bounded queue; ``poll`` delivers everything queued, per ``outcome``."""

    def __init__(
        self,
        clock: SimClock,
        *,
        capacity: int = 1_000_000,
        outcome: Outcome | None = None,
        deliver: bool = True,
        sync_error: Callable[[bytes], KafkaError | None] | None = None,
        instant: bool = True,
        produce_cost_s: float = 0.0,
    ) -> None:
        self.clock = clock
        self.capacity = capacity
        self.outcome = outcome or (lambda _value, _attempt: None)
        self.deliver = deliver
        self.sync_error = sync_error
        # False: like a real network, reports are not there yet on a poll(0).
        self.instant = instant
        self.produce_cost_s = produce_cost_s  # simulated CPU time of one produce()
        self.queue: list[tuple[bytes, bytes, list[tuple[str, bytes]], Any]] = []
        self.attempts: dict[bytes, int] = defaultdict(int)
        self.log: list[FakeMessage] = []  # what the "broker" stored
        self.headers_seen: list[list[tuple[str, bytes]]] = []
        self.polls = 0
        self.timeouts: list[float] = []
        self.on_poll: Callable[[], None] | None = None

    def produce(
        self, topic: str, *, value: bytes, key: bytes, headers: Any, on_delivery: Any
    ) -> None:
        assert topic == TOPIC
        self.clock.t += self.produce_cost_s
        if len(self.queue) >= self.capacity:
            raise BufferError("Local: Queue full")
        if self.sync_error is not None:
            error = self.sync_error(value)
            if error is not None:
                raise KafkaException(error)
        self.queue.append((key, value, headers, on_delivery))

    def poll(self, timeout: float = 0.0) -> int:
        self.polls += 1
        self.timeouts.append(timeout)
        if self.on_poll is not None:
            self.on_poll()
        if not self.deliver or not self.queue or (timeout == 0 and not self.instant):
            self.clock.t += timeout
            return 0
        batch, self.queue = self.queue, []
        for key, value, headers, callback in batch:
            attempt = self.attempts[value]
            self.attempts[value] += 1
            error = self.outcome(value, attempt)
            partition = int(key[-2:]) % 3
            msg = FakeMessage(TOPIC, key, value, partition, len(self.log))
            if error is None:
                self.log.append(msg)
                self.headers_seen.append(headers)
            callback(error, msg)
        return len(batch)

    def __len__(self) -> int:
        return len(self.queue)


@pytest.fixture
def clock() -> SimClock:
    return SimClock()


@pytest.fixture
def logs() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    out = io.StringIO()
    configure_logging("DEBUG", "json", stream=out)
    yield lambda: [json.loads(line) for line in out.getvalue().splitlines()]
    configure_logging("INFO", "json", stream=io.StringIO())


def make(
    tmp_path: Path,
    clock: SimClock,
    fake: FakeProducer,
    *,
    rate: float = 0,
    count: int | None = 100,
    seed: int = 1,
    **kwargs: Any,
) -> OrderProducer:
    return OrderProducer(
        fake,
        TOPIC,
        OrderGenerator(seed),
        OrderIdAllocator(tmp_path / "state", clock=clock),
        RateLimiter(rate, clock=clock, sleep=lambda s: pytest.fail("must poll, not sleep")),
        count=count,
        clock=clock,
        now=clock.wall,
        **kwargs,
    )


def stop_once(producer: OrderProducer, condition: Callable[[], bool]) -> Callable[[], None]:
    """An ``on_poll`` hook: one stop request (one SIGTERM) when ``condition`` holds."""
    sent = False

    def hook() -> None:
        nonlocal sent
        if not sent and condition():
            sent = True
            producer.request_stop()

    return hook


def timed_out(_value: bytes = b"", _attempt: int = 0) -> KafkaError:
    return KafkaError(KafkaError._MSG_TIMED_OUT, "Local: Message timed out")


def test_count_orders_are_delivered_keyed_by_customer_with_headers(
    tmp_path: Path, clock: SimClock
) -> None:
    fake = FakeProducer(clock)
    result = make(tmp_path, clock, fake, count=500).run()
    assert result == ProduceResult(
        delivered=500,
        failed=0,
        in_flight=0,
        unsent=0,
        reason="count reached",
        elapsed_s=result.elapsed_s,
    )
    assert result.exit_code == 0
    orders = [Order.model_validate_json(msg.value()) for msg in fake.log]
    assert len({o.order_id for o in orders}) == 500
    assert all(msg.key() == o.customer_id.encode() for msg, o in zip(fake.log, orders, strict=True))
    assert all(headers == kafka_headers() for headers in fake.headers_seen)
    assert all(o.created_at.tzinfo is not None for o in orders)
    assert all(o.order_id[4:12] == f"{o.created_at:%Y%m%d}" for o in orders)


def test_the_same_seed_gives_the_same_orders_but_fresh_ids(tmp_path: Path, clock: SimClock) -> None:
    runs = []
    for _ in range(2):
        fake = FakeProducer(clock)
        make(tmp_path, clock, fake, count=50, seed=99).run()
        runs.append([Order.model_validate_json(m.value()) for m in fake.log])
    first, second = runs

    def content(order: Order) -> tuple[Any, ...]:
        return (order.customer_id, order.items, order.total_amount)

    assert [content(o) for o in first] == [content(o) for o in second]
    assert not {o.order_id for o in first} & {o.order_id for o in second}


def test_the_rate_is_kept_by_polling_between_orders(tmp_path: Path, clock: SimClock) -> None:
    fake = FakeProducer(clock)
    producer = make(tmp_path, clock, fake, rate=20, count=101)
    start = clock.t
    result = producer.run()
    assert result.delivered == 101
    # 101 orders at 20/s: the last one is due 5 s after the first.
    assert clock.t - start == pytest.approx(5.0, abs=0.1)
    stamps = [Order.model_validate_json(m.value()).created_at for m in fake.log]
    gaps = {round((b - a).total_seconds(), 6) for a, b in itertools.pairwise(stamps)}
    assert gaps == {0.05}


def test_waiting_at_1000_per_second_blocks_instead_of_spinning(
    tmp_path: Path, clock: SimClock
) -> None:
    # librdkafka rounds poll timeouts down to whole milliseconds: a 0.4 ms wait passed
    # as poll(0.0004) would return at once and the loop would spin until the slot.
    fake = FakeProducer(clock, instant=False, produce_cost_s=0.0003)
    producer = make(tmp_path, clock, fake, rate=1000, count=3000)
    start = clock.t
    result = producer.run()
    assert result.delivered == 3000
    blocking = [t for t in fake.timeouts if t != 0]
    assert blocking
    assert min(blocking) >= 0.001
    # A wait per order, plus one when a poll returns early with delivery reports.
    assert len(blocking) <= 2 * 3000
    # Rounding waits up to 1 ms costs no throughput: the schedule catches up.
    assert clock.t - start == pytest.approx(3.0, rel=0.02)


def test_a_full_local_queue_is_handled_by_polling(tmp_path: Path, clock: SimClock) -> None:
    fake = FakeProducer(clock, capacity=7, instant=False)
    producer = make(tmp_path, clock, fake, count=300)
    result = producer.run()
    assert result.exit_code == 0
    assert result.delivered == 300
    assert producer.stats.buffer_full > 0
    assert len({m.value() for m in fake.log}) == 300, "no order lost or sent twice"


def test_transient_delivery_errors_are_retried_with_exponential_backoff(
    tmp_path: Path, clock: SimClock, logs: Callable[[], list[dict[str, Any]]]
) -> None:
    # Every order times out twice, then gets through.
    fake = FakeProducer(clock, outcome=lambda _v, attempt: timed_out() if attempt < 2 else None)
    producer = make(tmp_path, clock, fake, count=20, retry_backoff_s=0.5)
    start = clock.t
    result = producer.run()
    assert result.exit_code == 0
    assert result.delivered == 20
    assert producer.stats.retried == 40
    assert len(fake.log) == 20
    assert clock.t - start >= 0.5 + 1.0, "backoff of 0.5 s, then 1 s"
    retries = [line for line in logs() if line["event"] == "delivery failed, will retry"]
    assert len(retries) == 40
    assert {line["backoff_s"] for line in retries} == {0.5, 1.0}
    assert all(line["order_id"].startswith("ORD-") for line in retries)
    assert all(line["level"] == "warning" for line in retries)


def test_after_three_retries_a_transient_error_counts_as_failed(
    tmp_path: Path, clock: SimClock, logs: Callable[[], list[dict[str, Any]]]
) -> None:
    fake = FakeProducer(clock, outcome=timed_out)
    producer = make(tmp_path, clock, fake, count=5)
    result = producer.run()
    assert result.failed == 5
    assert result.delivered == 0
    assert result.in_flight == 0
    assert result.exit_code == 1
    assert set(fake.attempts.values()) == {4}, "one send and three retries each"
    failures = [line for line in logs() if line["event"] == "delivery failed"]
    assert len(failures) == 5
    assert {line["attempts"] for line in failures} == {4}
    assert {line["order_id"] for line in failures} == {
        Order.model_validate_json(v).order_id for v in fake.attempts
    }
    summary = logs()[-1]
    assert summary["event"] == "producer stopped"
    assert (summary["failed"], summary["lost"], summary["level"]) == (5, True, "error")


def test_permanent_errors_are_logged_and_counted_without_retry(
    tmp_path: Path, clock: SimClock, logs: Callable[[], list[dict[str, Any]]]
) -> None:
    too_large = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Broker: Message size too large")
    fake = FakeProducer(
        clock, outcome=lambda value, _a: too_large if b"CUST-0004" in value else None
    )
    producer = make(tmp_path, clock, fake, count=300)
    result = producer.run()
    assert result.failed > 0
    assert result.delivered + result.failed == 300
    assert producer.stats.retried == 0
    assert result.exit_code == 1
    failures = [line for line in logs() if line["event"] == "delivery failed"]
    assert len(failures) == result.failed
    assert all(line["permanent"] and line["code"] == "MSG_SIZE_TOO_LARGE" for line in failures)


def test_synchronous_produce_errors_are_accounted_for(tmp_path: Path, clock: SimClock) -> None:
    refused = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Message size too large")
    fake = FakeProducer(clock, sync_error=lambda v: refused if b"CUST-0001" in v else None)
    producer = make(tmp_path, clock, fake, count=200)
    result = producer.run()
    assert result.failed > 0
    assert result.delivered + result.failed == 200 == producer.stats.sent
    assert result.in_flight == 0


def test_a_transient_synchronous_error_is_retried(tmp_path: Path, clock: SimClock) -> None:
    seen: set[bytes] = set()

    def first_time_only(value: bytes) -> KafkaError | None:
        if value in seen:
            return None
        seen.add(value)
        return KafkaError(KafkaError._TRANSPORT, "Local: Broker transport failure")

    fake = FakeProducer(clock, sync_error=first_time_only)
    producer = make(tmp_path, clock, fake, count=10)
    result = producer.run()
    assert (result.delivered, result.failed, result.exit_code) == (10, 0, 0)
    assert producer.stats.retried == 10


def test_a_fatal_error_stops_the_producer(
    tmp_path: Path, clock: SimClock, logs: Callable[[], list[dict[str, Any]]]
) -> None:
    fenced = KafkaError(KafkaError._FENCED, "fenced", fatal=True)
    fake = FakeProducer(clock, outcome=lambda _v, _a: fenced)
    producer = make(tmp_path, clock, fake, count=None)
    result = producer.run()
    assert result.fatal is not None
    assert "_FENCED" in result.fatal
    assert result.reason == "fatal error"
    assert result.exit_code == 1
    assert any(line["event"] == "producer cannot continue" for line in logs())


def test_client_errors_are_logged_once_per_kind_and_fatal_ones_stop(
    tmp_path: Path, clock: SimClock, logs: Callable[[], list[dict[str, Any]]]
) -> None:
    fake = FakeProducer(clock)
    producer = make(tmp_path, clock, fake, count=None)
    down = KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down")
    for _ in range(5):
        producer.on_client_error(down)
    clock.t += 31
    producer.on_client_error(down)
    warnings = [line for line in logs() if line["event"] == "kafka client error"]
    assert len(warnings) == 2
    producer.on_client_error(KafkaError(KafkaError._FATAL, "idempotence broken", fatal=True))
    result = producer.run()
    assert result.fatal is not None
    assert result.delivered == 0


def test_stop_request_flushes_what_was_sent_and_exits_clean(
    tmp_path: Path, clock: SimClock, logs: Callable[[], list[dict[str, Any]]]
) -> None:
    fake = FakeProducer(clock)
    producer = make(tmp_path, clock, fake, rate=100, count=None)
    fake.on_poll = stop_once(producer, lambda: len(fake.log) >= 40)
    result = producer.run()
    assert result.reason == "signal"
    assert result.exit_code == 0
    assert result.in_flight == 0
    assert result.delivered == len(fake.log) >= 40
    summary = logs()[-1]
    assert summary["event"] == "producer stopped"
    assert summary["delivered"] == result.delivered
    assert (summary["failed"], summary["in_flight"], summary["lost"]) == (0, 0, False)


def test_unconfirmed_orders_at_the_flush_deadline_mean_exit_1(
    tmp_path: Path, clock: SimClock
) -> None:
    fake = FakeProducer(clock, deliver=False)  # the broker never answers
    producer = make(tmp_path, clock, fake, count=None, flush_timeout_s=3.0)
    fake.on_poll = stop_once(producer, lambda: len(fake.queue) >= 10)
    result = producer.run()
    assert result.in_flight == 10
    assert result.exit_code == 1
    assert 3.0 <= result.elapsed_s <= 3.5, "the flush gave up at its deadline"


def test_a_second_stop_request_cuts_the_flush_short(tmp_path: Path, clock: SimClock) -> None:
    fake = FakeProducer(clock, deliver=False)
    producer = make(tmp_path, clock, fake, count=None, flush_timeout_s=60.0)

    first = stop_once(producer, lambda: len(fake.queue) >= 10)
    second = stop_once(producer, lambda: clock.t > 102)

    def on_poll() -> None:
        first()
        second()

    fake.on_poll = on_poll
    result = producer.run()
    assert result.in_flight == 10
    assert result.elapsed_s < 5


def test_a_stop_during_the_final_wait_of_a_count_run_bounds_it(
    tmp_path: Path, clock: SimClock
) -> None:
    fake = FakeProducer(clock, deliver=False)
    producer = make(tmp_path, clock, fake, count=5, flush_timeout_s=2.0)
    fake.on_poll = stop_once(producer, lambda: clock.t > 110)
    result = producer.run()
    assert result.reason == "count reached"
    assert result.in_flight == 5
    assert 10 <= result.elapsed_s <= 12.5


def test_an_order_never_accepted_before_a_stop_is_dropped_not_lost(
    tmp_path: Path, clock: SimClock
) -> None:
    fake = FakeProducer(clock, capacity=3, deliver=False)
    producer = make(tmp_path, clock, fake, count=None, flush_timeout_s=1.0)
    fake.on_poll = stop_once(producer, lambda: producer.stats.buffer_full > 5)
    result = producer.run()
    assert result.unsent == 1
    assert result.in_flight == 3, "what was accepted is still accounted for"


def test_exhausted_order_ids_stop_the_producer(tmp_path: Path, clock: SimClock) -> None:
    fake = FakeProducer(clock)
    producer = make(tmp_path, clock, fake, count=None)

    class Exhausted(OrderIdAllocator):
        def next_id(self, created_at: datetime) -> str:
            if len(fake.log) + len(fake.queue) >= 25:
                raise OrderIdError("order ids for 2025-01-10 are exhausted")
            return super().next_id(created_at)

    producer._ids = Exhausted(tmp_path / "state2", clock=clock)
    result = producer.run()
    assert result.delivered == 25
    assert result.fatal == "order ids for 2025-01-10 are exhausted"
    assert result.exit_code == 1


def test_debug_logs_one_line_per_order_with_its_id(
    tmp_path: Path, clock: SimClock, logs: Callable[[], list[dict[str, Any]]]
) -> None:
    fake = FakeProducer(clock)
    make(tmp_path, clock, fake, count=10, debug=True).run()
    delivered = [line for line in logs() if line["event"] == "order delivered"]
    generated = [line for line in logs() if line["event"] == "order generated"]
    ids = [Order.model_validate_json(m.value()).order_id for m in fake.log]
    assert [line["order_id"] for line in delivered] == ids
    assert [line["order_id"] for line in generated] == ids
    assert all(line["level"] == "debug" and line["topic"] == TOPIC for line in delivered)
    assert {"partition", "offset"} <= set(delivered[0])


def test_at_info_there_is_no_line_per_order(
    tmp_path: Path, clock: SimClock, logs: Callable[[], list[dict[str, Any]]]
) -> None:
    fake = FakeProducer(clock)
    make(tmp_path, clock, fake, count=200, debug=False).run()
    assert [line["event"] for line in logs()] == ["producer started", "producer stopped"]


def test_periodic_progress_lines_report_rate_and_totals(
    tmp_path: Path, clock: SimClock, logs: Callable[[], list[dict[str, Any]]]
) -> None:
    fake = FakeProducer(clock)
    producer = make(
        tmp_path, clock, fake, rate=50, count=1000, reporters=[LogReporter(interval_s=5.0)]
    )
    producer.run()
    progress = [line for line in logs() if line["event"] == "progress"]
    # 1,000 orders at 50/s is 20 s: a line every 5 s.
    assert 3 <= len(progress) <= 4
    assert all(line["level"] == "info" for line in progress)
    assert all(abs(line["rate"] - 50) <= 2 for line in progress)
    assert progress[-1]["delivered"] >= 750
    assert {"failed", "in_flight", "retried"} <= set(progress[0])


def test_the_progress_bar_counts_confirmed_deliveries(tmp_path: Path, clock: SimClock) -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    fake = FakeProducer(clock)
    bar = ProgressReporter(40, console=console)
    make(tmp_path, clock, fake, rate=10, count=40, reporters=[bar]).run()
    assert "40/40" in out.getvalue()


def test_signals_request_a_stop_and_the_handlers_are_restored(
    tmp_path: Path, clock: SimClock
) -> None:
    fake = FakeProducer(clock)
    producer = make(tmp_path, clock, fake, count=None)
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals(producer):
        os.kill(os.getpid(), signal.SIGTERM)
        assert producer._stop
        os.kill(os.getpid(), signal.SIGINT)
        assert producer._abort
    assert signal.getsignal(signal.SIGTERM) is before


def test_stats_balance() -> None:
    stats = ProducerStats(sent=10, delivered=6, failed=1, retried=3)
    assert stats.in_flight == 3
    assert stats.as_dict() == {
        "sent": 10,
        "delivered": 6,
        "failed": 1,
        "retried": 3,
        "buffer_full": 0,
        "in_flight": 3,
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b'{"order_id":"ORD-20250110-00001","customer_id":"CUST-00001"}', "ORD-20250110-00001"),
        (b'{"customer_id":"CUST-00001","order_id":"ORD-20250110-00002"}', "ORD-20250110-00002"),
        (b"not json", "?"),
        (b"", "?"),
        (None, "?"),
        (b"[1]", "?"),
    ],
)
def test_order_id_of(value: bytes | None, expected: str) -> None:
    assert order_id_of(value) == expected


def test_transient_classification() -> None:
    assert is_transient(timed_out())
    assert is_transient(KafkaError(KafkaError.NOT_ENOUGH_REPLICAS, "x"))
    assert is_transient(KafkaError(KafkaError.UNKNOWN, "x", retriable=True))
    assert not is_transient(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "x"))
    assert not is_transient(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "x"))
