"""The produce loop: generate orders at a rate, publish them, account for every one.

Delivery contract
-----------------
1. Wait for the next rate slot (:class:`RateLimiter`), serving delivery reports while
   waiting (the limiter's sleep is ``producer.poll``).
2. Draw the order's contents, stamp ``created_at`` (UTC now) and an id from the
   :class:`OrderIdAllocator`, serialise, and ``produce()`` it keyed by ``customer_id``
   (one customer's orders stay ordered on one partition) with the contract's headers.
   ``poll(0)`` after each send serves delivery reports as they arrive.
3. ``BufferError`` (librdkafka's bounded local queue is full, e.g. the broker is slow
   or down): keep the order, poll to let deliveries drain, try again. Nothing is
   generated meanwhile, so memory stays bounded.
4. The delivery report decides each order's fate:

   - success: counted delivered;
   - transient error (timed out, broker or leader unavailable, ...), after
     librdkafka's own retries within ``delivery.timeout.ms``: re-sent by the
     application up to ``max_retries`` (3) times with exponential backoff
     (``retry_backoff_s`` x 1, 2, 4). A re-send may duplicate an order whose first
     attempt did reach the broker; the consumer's idempotent write on ``order_id``
     absorbs that (at-least-once). A re-sent order may also land after later orders
     of the same customer;
   - permanent error (too large, not authorised, unknown topic, or retries spent):
     logged with the order id and counted failed;
   - fatal error (the idempotent producer cannot guarantee its promises any more):
     logged, and the producer stops.

5. Stop (SIGTERM/SIGINT, ``--count`` reached, or a fatal error): generate nothing
   more, then keep polling and re-sending due retries until nothing is in flight or
   ``flush_timeout_s`` passes (``--count`` completion waits for every report, which
   librdkafka bounds by ``delivery.timeout.ms``). A second signal cuts the flush short.
   The summary says how many orders were delivered, failed and still in flight;
   the exit code is 0 only when none failed and none is left in flight.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import json
import logging
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException

from foodpipe.log import get_logger
from foodpipe.models import kafka_headers
from foodpipe.producer.generator import OrderGenerator, format_created_at
from foodpipe.producer.ids import OrderIdAllocator, OrderIdError
from foodpipe.producer.ratelimit import RateLimiter
from foodpipe.producer.stats import ProducerStats

#: Errors worth re-sending after librdkafka has given up on its own retries: the
#: broker, the network or the partition leadership may well be back a moment later.
TRANSIENT_ERRORS = frozenset(
    {
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._TIMED_OUT_QUEUE,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._RESOLVE,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        KafkaError.REPLICA_NOT_AVAILABLE,
        KafkaError.KAFKA_STORAGE_ERROR,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.THROTTLING_QUOTA_EXCEEDED,
    }
)

_ORDER_ID_AT = len(b'{"order_id":"')
#: The shortest blocking poll: librdkafka's timeouts are whole milliseconds.
MIN_POLL_S = 0.001


class KafkaProducerLike(Protocol):
    """The part of ``confluent_kafka.Producer`` the loop uses (a fake in unit tests)."""

    def produce(self, topic: str, *args: Any, **kwargs: Any) -> None: ...

    def poll(self, timeout: float = ...) -> int: ...


class Reporter(Protocol):
    """Shown the counters every ``tick_s`` (a log line every few seconds, a bar)."""

    def update(self, stats: ProducerStats, now: float) -> None: ...

    def close(self, stats: ProducerStats, now: float) -> None: ...


@dataclass(frozen=True)
class ProduceResult:
    delivered: int
    failed: int
    in_flight: int
    #: 1 if a generated order was never accepted by librdkafka when the producer
    #: stopped (its id is a gap; no one was told about it, so it is not lost).
    unsent: int
    reason: str
    elapsed_s: float
    fatal: str | None = None

    @property
    def rate(self) -> float:
        return self.delivered / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def exit_code(self) -> int:
        lost = self.failed or self.in_flight or self.fatal is not None
        return 1 if lost else 0


def is_transient(error: KafkaError) -> bool:
    return bool(error.retriable()) or error.code() in TRANSIENT_ERRORS


def order_id_of(value: bytes | None) -> str:
    """The order id inside a serialised order, for log lines about a failure."""
    if not value:
        return "?"
    # The generator writes order_id first, so slicing avoids parsing on the hot path.
    end = value.find(b'"', _ORDER_ID_AT)
    if value.startswith(b'{"order_id":"') and end > 0:
        return value[_ORDER_ID_AT:end].decode(errors="replace")
    try:
        return str(json.loads(value)["order_id"])
    except (ValueError, KeyError, TypeError):
        return "?"


def utc_now() -> datetime:
    return datetime.now(UTC)


class OrderProducer:
    """Runs the delivery contract above. Build it in the entrypoint; call :meth:`run`."""

    def __init__(
        self,
        producer: KafkaProducerLike,
        topic: str,
        generator: OrderGenerator,
        ids: OrderIdAllocator,
        limiter: RateLimiter,
        *,
        count: int | None = None,
        stats: ProducerStats | None = None,
        reporters: Sequence[Reporter] = (),
        max_retries: int = 3,
        retry_backoff_s: float = 0.5,
        flush_timeout_s: float = 8.0,
        tick_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utc_now,
        debug: bool | None = None,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._generator = generator
        self._ids = ids
        self._limiter = limiter
        self._count = count
        self.stats = stats if stats is not None else ProducerStats()
        self._reporters = list(reporters)
        self._max_retries = max_retries
        self._retry_backoff_s = retry_backoff_s
        self._flush_timeout_s = flush_timeout_s
        self._tick_s = tick_s
        self._clock = clock
        self._now = now
        self._debug = logging.getLogger().isEnabledFor(logging.DEBUG) if debug is None else debug
        self._log = get_logger("producer", topic=topic)
        self._headers = kafka_headers()
        self._stop = False
        self._abort = False
        self._fatal: str | None = None
        # (due, seq, key, value, attempt) of orders waiting for an application retry.
        self._retries: list[tuple[float, int, bytes, bytes, int]] = []
        self._retry_seq = 0
        # A generated order librdkafka has not accepted yet (its queue was full).
        self._unsent: tuple[bytes, bytes] | None = None
        self._next_tick = 0.0
        self._started = 0.0
        self._client_errors: dict[str, float] = {}

    # -- control -----------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop generating and flush (what SIGTERM/SIGINT do). Safe in a signal handler."""
        if self._stop:
            # A second request: do not wait for the flush any longer.
            self._abort = True
        self._stop = True

    def _stopping(self) -> bool:
        return self._stop

    def on_client_error(self, err: KafkaError) -> None:
        """librdkafka's ``error_cb``: client-wide errors, not tied to one message.

        Most are transient (a broker connection dropped) and librdkafka recovers by
        itself; they are logged, once per kind per ``30 s``. A fatal one means the
        idempotent producer can no longer keep its guarantees: stop.
        """
        if err.fatal():
            self._fail_fatally(f"fatal Kafka producer error: {err.name()}: {err.str()}")
            return
        now = self._clock()
        if now - self._client_errors.get(err.name(), -1e9) >= 30.0:
            self._client_errors[err.name()] = now
            self._log.warning("kafka client error", code=err.name(), error=err.str())

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> ProduceResult:
        self._started = self._clock()
        self._log.info(
            "producer started",
            rate=self._limiter.rate,
            count=self._count,
            seed=self._generator.seed,
        )
        reason = "signal"
        while not self._stop:
            if self._resend_due() or self._unsent is not None:
                # The local queue is full: serve delivery reports to make room first.
                self._idle(0.05)
                if self._unsent is not None and self._try_produce(*self._unsent, attempt=0):
                    self._unsent = None
                    self.stats.sent += 1
                continue
            if self._count is not None and self.stats.sent >= self._count:
                reason = "count reached"
                break
            if not self._limiter.wait(self._stopping, self._idle):
                break
            self._send_new()
            # poll(0) never waits: it serves delivery reports that have arrived, which is
            # where librdkafka calls our delivery callback (confirmed or failed).
            self._producer.poll(0)
            self._tick()
        if self._fatal is not None:
            reason = "fatal error"
        self._drain(bounded=self._stop)
        return self._finish(reason)

    def _send_new(self) -> None:
        created_at = self._now()
        try:
            order_id = self._ids.next_id(created_at)
        except OrderIdError as exc:
            self._fail_fatally(str(exc))
            return
        content = self._generator.next_content()
        value = self._generator.render(content, order_id, created_at)
        # The key picks the partition (a hash of the key modulo the partition count), so
        # every order of one customer lands on the same partition, and Kafka keeps a
        # partition in order: a consumer sees each customer's orders in the order placed.
        key = content.customer_id.encode()
        if self._debug:
            self._log.debug(
                "order generated",
                order_id=order_id,
                customer_id=content.customer_id,
                lines=len(content.lines),
                total_amount=str(content.total),
                created_at=format_created_at(created_at),
            )
        if self._try_produce(key, value, attempt=0):
            self.stats.sent += 1
        else:
            self._unsent = (key, value)

    def _try_produce(self, key: bytes, value: bytes, attempt: int) -> bool:
        """Hand one message to librdkafka. ``False`` only if its queue is full."""
        callback = (
            self._on_delivery
            if attempt == 0
            else functools.partial(self._on_retry_delivery, attempt)
        )
        try:
            self._producer.produce(
                self._topic, value=value, key=key, headers=self._headers, on_delivery=callback
            )
        except BufferError:
            self.stats.buffer_full += 1
            return False
        except KafkaException as exc:
            # Rejected synchronously (e.g. too large): the same fate as a failed report.
            # The caller still counts a new order as sent, so the books balance.
            self._handle_error(exc.args[0], key, value, attempt)
        return True

    # -- delivery reports ----------------------------------------------------------

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is None:
            self.stats.delivered += 1
            if self._debug:
                self._log.debug(
                    "order delivered",
                    order_id=order_id_of(msg.value()),
                    partition=msg.partition(),
                    offset=msg.offset(),
                )
            return
        self._handle_error(err, msg.key(), msg.value(), attempt=0)

    def _on_retry_delivery(self, attempt: int, err: KafkaError | None, msg: Any) -> None:
        if err is None:
            self.stats.delivered += 1
            self._log.info(
                "order delivered after retry",
                order_id=order_id_of(msg.value()),
                attempt=attempt,
                partition=msg.partition(),
                offset=msg.offset(),
            )
            return
        self._handle_error(err, msg.key(), msg.value(), attempt=attempt)

    def _handle_error(self, err: KafkaError, key: bytes, value: bytes, attempt: int) -> None:
        order_id = order_id_of(value)
        if err.fatal():
            self.stats.failed += 1
            self._log.error("delivery failed", order_id=order_id, error=err.str(), code=err.name())
            self._fail_fatally(f"fatal Kafka producer error: {err.name()}: {err.str()}")
            return
        if is_transient(err) and attempt < self._max_retries:
            delay = self._retry_backoff_s * (2**attempt)
            self._retry_seq += 1
            heapq.heappush(
                self._retries,
                (self._clock() + delay, self._retry_seq, key, value, attempt + 1),
            )
            self.stats.retried += 1
            self._log.warning(
                "delivery failed, will retry",
                order_id=order_id,
                error=err.str(),
                code=err.name(),
                retry=attempt + 1,
                of=self._max_retries,
                backoff_s=delay,
            )
            return
        self.stats.failed += 1
        self._log.error(
            "delivery failed",
            order_id=order_id,
            error=err.str(),
            code=err.name(),
            attempts=attempt + 1,
            permanent=not is_transient(err),
        )

    def _fail_fatally(self, message: str) -> None:
        if self._fatal is None:
            self._fatal = message
            self._log.error("producer cannot continue", error=message)
        self._stop = True

    # -- housekeeping --------------------------------------------------------------

    def _resend_due(self) -> bool:
        """Re-send retries whose backoff is over. ``True`` if the local queue is full."""
        if not self._retries:
            return False
        now = self._clock()
        while self._retries and self._retries[0][0] <= now:
            # Pop before producing: a synchronous error pushes a new retry entry.
            entry = heapq.heappop(self._retries)
            if not self._try_produce(entry[2], entry[3], entry[4]):
                heapq.heappush(self._retries, entry)
                return True
        return False

    def _idle(self, timeout: float) -> None:
        """Wait up to ``timeout`` s while serving delivery reports (no busy-wait).

        librdkafka's poll timeout is whole milliseconds: a shorter wait (at 1,000/s most
        waits are) would become ``poll(0)`` and return at once, and the rate limiter
        would spin until the slot is due. Waiting at least 1 ms instead oversleeps by
        under a millisecond, which the limiter's schedule absorbs.
        """
        self._producer.poll(max(timeout, MIN_POLL_S))
        self._tick()

    def _tick(self) -> None:
        now = self._clock()
        if now >= self._next_tick:
            self._next_tick = now + self._tick_s
            for reporter in self._reporters:
                reporter.update(self.stats, now)

    def _drain(self, *, bounded: bool) -> None:
        deadline = self._clock() + self._flush_timeout_s if bounded else None
        if self._unsent is not None:
            self._log.debug("dropping an order never accepted by the local queue")
        while self.stats.in_flight > 0:
            now = self._clock()
            if deadline is None and self._stop:
                # A signal during a --count run's final wait: bound it from now.
                deadline = now + self._flush_timeout_s
            if self._abort or (deadline is not None and now >= deadline):
                break
            self._resend_due()
            wait = 0.1 if deadline is None else min(0.1, deadline - now)
            self._idle(wait)

    def _finish(self, reason: str) -> ProduceResult:
        now = self._clock()
        stats = self.stats
        for reporter in self._reporters:
            reporter.close(stats, now)
        result = ProduceResult(
            delivered=stats.delivered,
            failed=stats.failed,
            in_flight=stats.in_flight,
            unsent=1 if self._unsent is not None else 0,
            reason=reason,
            elapsed_s=now - self._started,
            fatal=self._fatal,
        )
        log = self._log.info if result.exit_code == 0 else self._log.error
        log(
            "producer stopped",
            reason=reason,
            delivered=result.delivered,
            failed=result.failed,
            in_flight=result.in_flight,
            unsent=result.unsent,
            retried=stats.retried,
            buffer_full=stats.buffer_full,
            elapsed_s=round(result.elapsed_s, 3),
            rate=round(result.rate, 1),
            seed=self._generator.seed,
            lost=result.exit_code != 0,
        )
        return result


@contextlib.contextmanager
def stop_on_signals(producer: OrderProducer) -> Iterator[None]:
    """SIGTERM/SIGINT ask ``producer`` to stop; a second one cuts the flush short."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        producer.request_stop()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
