"""The dead-letter topic: where messages that are not valid orders go, with their reason.

A dead-lettered message keeps the original key, value and headers byte for byte, so it
can be inspected or replayed exactly, and gains ``dlq-*`` headers saying where it came
from and why it was rejected. The one exception: ``dlq-*`` headers the producer itself
set are dropped, because the tools would read them as the consumer's verdict (a forged
``dlq-value-truncated`` made replay treat a whole value as cut). The readers
(:func:`header_map`) also ignore any ``dlq-*`` header before the consumer's own block,
which starts with ``dlq-original-topic``, for dead letters written before that rule:

==========================  ==============================================
header                      value (UTF-8)
==========================  ==============================================
``dlq-original-topic``      topic the message was consumed from
``dlq-original-partition``  its partition (decimal)
``dlq-original-offset``     its offset (decimal)
``dlq-original-timestamp``  its Kafka timestamp, ms since the epoch
``dlq-error-class``         an :class:`~foodpipe.consumer.classify.ErrorClass` value
``dlq-reason``              one readable line
``dlq-consumer-group``      the group that rejected it
``dlq-failed-at``           when, ISO 8601 UTC
==========================  ==============================================

Delivery is confirmed before the consumer commits past the original message: the DLQ
producer is idempotent with ``acks=all``, and :meth:`DeadLetterQueue.flush` waits for
every delivery report. A message the DLQ cannot take is a fatal error: committing past
it would lose it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException

from foodpipe.errors import FatalError, PoisonMessage
from foodpipe.log import get_logger

HEADER_ORIGINAL_TOPIC = "dlq-original-topic"
HEADER_ORIGINAL_PARTITION = "dlq-original-partition"
HEADER_ORIGINAL_OFFSET = "dlq-original-offset"
HEADER_ORIGINAL_TIMESTAMP = "dlq-original-timestamp"
HEADER_ERROR_CLASS = "dlq-error-class"
HEADER_REASON = "dlq-reason"
HEADER_CONSUMER_GROUP = "dlq-consumer-group"
HEADER_FAILED_AT = "dlq-failed-at"
#: Set only when the original value did not fit the DLQ and was cut: its original length.
HEADER_VALUE_TRUNCATED = "dlq-value-truncated"

#: What is kept of a value too large for the dead-letter topic: enough to diagnose it.
TRUNCATED_VALUE_BYTES = 64 * 1024
#: Header values are capped, so a long reason cannot make the DLQ message too large.
MAX_REASON_BYTES = 1000

#: Header list as confluent-kafka takes and returns it.
Headers = list[tuple[str, str | bytes | None]]
DeliveryCallback = Callable[[Any, Any], None]


class KafkaMessage(Protocol):
    """The parts of ``confluent_kafka.Message`` the consumer uses (fakes implement it)."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(
        self,
    ) -> dict[str, str | bytes | None] | list[tuple[str, str | bytes | None]] | None: ...
    def timestamp(self) -> tuple[int, int]: ...
    def error(self) -> KafkaError | None: ...


class ProducerLike(Protocol):
    """The parts of ``confluent_kafka.Producer`` the DLQ uses."""

    def produce(
        self,
        topic: str,
        value: str | bytes | None = ...,
        key: str | bytes | None = ...,
        *,
        on_delivery: DeliveryCallback | None = ...,
        headers: Headers | None = ...,
    ) -> None: ...
    def poll(self, timeout: float = ...) -> int: ...
    def flush(self, timeout: float = ...) -> int: ...


def dlq_headers(
    message: KafkaMessage,
    poison: PoisonMessage,
    group: str,
    failed_at: datetime | None = None,
) -> Headers:
    """The original headers (kept, in order, but none named ``dlq-*``), then ours."""
    raw = message.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    original: Headers = [(name, value) for name, value in pairs if not _ours(name)]
    _, timestamp_ms = message.timestamp()
    when = (failed_at or datetime.now(UTC)).isoformat(timespec="milliseconds")
    reason = poison.reason.encode("utf-8")[:MAX_REASON_BYTES]
    return [
        *original,
        (HEADER_ORIGINAL_TOPIC, str(message.topic()).encode()),
        (HEADER_ORIGINAL_PARTITION, str(message.partition()).encode()),
        (HEADER_ORIGINAL_OFFSET, str(message.offset()).encode()),
        (HEADER_ORIGINAL_TIMESTAMP, str(timestamp_ms).encode()),
        (HEADER_ERROR_CLASS, str(poison.error_class).encode()),
        # A cut in the middle of a multi-byte character would make the header invalid
        # UTF-8; decode-and-re-encode drops the partial character.
        (HEADER_REASON, reason.decode("utf-8", errors="ignore").encode("utf-8")),
        (HEADER_CONSUMER_GROUP, group.encode()),
        (HEADER_FAILED_AT, when.encode()),
    ]


def _ours(name: str) -> bool:
    return name.startswith("dlq-")


def header_map(headers: Sequence[tuple[str, str | bytes | None]] | None) -> dict[str, str]:
    """``{name: decoded value}`` of the consumer's ``dlq-*`` headers, for tools and tests.

    Only the block the consumer appended counts: from the last ``dlq-original-topic``
    on. Anything named ``dlq-*`` before it came from the original producer.
    """
    pairs = list(headers or [])
    starts = [i for i, (name, _) in enumerate(pairs) if name == HEADER_ORIGINAL_TOPIC]
    result = {}
    for name, value in pairs[starts[-1] if starts else len(pairs) :]:
        if _ours(name):
            raw = value.encode() if isinstance(value, str) else (value or b"")
            result[name] = raw.decode("utf-8", errors="replace")
    return result


@dataclass
class _Pending:
    key: bytes | None
    value: bytes | None
    headers: Headers
    origin: str
    error: KafkaError | None = None
    delivered: bool = False


@dataclass
class DeadLetterQueue:
    """Produces poison messages to the DLQ and confirms their delivery."""

    producer: ProducerLike
    topic: str
    group: str
    #: Longer than the producer's ``delivery.timeout.ms`` so librdkafka gives its verdict.
    flush_timeout_s: float = 130.0
    _pending: list[_Pending] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._log = get_logger("consumer.dlq", dlq_topic=self.topic)

    def send(self, message: KafkaMessage, poison: PoisonMessage) -> None:
        """Queue one poison message; :meth:`flush` confirms it."""
        origin = f"{message.topic()}[{message.partition()}]@{message.offset()}"
        headers = dlq_headers(message, poison, self.group)
        item = _Pending(message.key(), message.value(), headers, origin)
        self._pending.append(item)
        self._produce(item)

    def flush(self) -> int:
        """Wait until every queued message is confirmed; returns how many were.

        Raises :class:`FatalError` if one was refused or not confirmed in time: the
        caller must then not commit the offsets of the originals.
        """
        if not self._pending:
            return 0
        remaining = self.producer.flush(self.flush_timeout_s)
        # A message too large for the DLQ is resent truncated, with a header saying so.
        retry = [
            p for p in self._pending if p.error is not None and _too_large(p.error) and _truncate(p)
        ]
        for item in retry:
            self._log.warning(
                "dead letter too large for the topic; resending it truncated",
                origin=item.origin,
                kept_bytes=len(item.value or b""),
            )
            item.error = None
            self._produce(item)
        if retry:
            remaining = self.producer.flush(self.flush_timeout_s)
        failed = [p for p in self._pending if not p.delivered]
        confirmed = len(self._pending) - len(failed)
        self._pending.clear()
        if failed or remaining:
            first = failed[0] if failed else None
            detail = first.error.str() if first and first.error else "no delivery report in time"
            raise FatalError(
                f"dead-letter topic {self.topic} is not writable ({detail}; {len(failed)} of"
                f" {confirmed + len(failed)} messages unconfirmed); refusing to commit past them"
            )
        return confirmed

    def _produce(self, item: _Pending) -> None:
        def on_delivery(error: KafkaError | None, _msg: Any) -> None:
            item.error = error
            item.delivered = error is None

        while True:
            try:
                self.producer.produce(
                    self.topic,
                    key=item.key,
                    value=item.value,
                    headers=item.headers,
                    on_delivery=on_delivery,
                )
                return
            except BufferError:
                # The bounded local queue is full: serve delivery reports to make room.
                self.producer.poll(0.5)
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if isinstance(error, KafkaError) and _too_large(error) and _truncate(item):
                    continue
                raise FatalError(
                    f"cannot produce to dead-letter topic {self.topic}: {exc}"
                ) from None


def _truncate(item: _Pending) -> bool:
    """Cut the value to :data:`TRUNCATED_VALUE_BYTES`; False if there is nothing to cut."""
    value = item.value or b""
    if len(value) <= TRUNCATED_VALUE_BYTES:
        return False
    item.headers = [*item.headers, (HEADER_VALUE_TRUNCATED, str(len(value)).encode())]
    item.value = value[:TRUNCATED_VALUE_BYTES]
    return True


def _too_large(error: KafkaError) -> bool:
    # librdkafka uses the same code for its own pre-send check and the broker's refusal.
    return bool(error.code() == KafkaError.MSG_SIZE_TOO_LARGE)
