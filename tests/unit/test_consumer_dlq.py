"""DLQ header construction and the confirm-before-commit behaviour, with a fake producer."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from foodpipe.consumer.dlq import (
    HEADER_VALUE_TRUNCATED,
    MAX_REASON_BYTES,
    TRUNCATED_VALUE_BYTES,
    DeadLetterQueue,
    dlq_headers,
    header_map,
)
from foodpipe.errors import FatalError, PoisonMessage


@dataclass
class FakeMessage:
    _topic: str = "food-orders"
    _partition: int = 2
    _offset: int = 41
    _key: bytes | None = b"CUST-00001"
    _value: bytes | None = b'{"order_id": 1}'
    _headers: Any = field(default_factory=lambda: [("schema-version", b"1")])
    _timestamp: tuple[int, int] = (1, 1736510400000)

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

    def headers(self) -> Any:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return self._timestamp

    def error(self) -> None:
        return None


@dataclass
class FakeProducer:
    """Delivers on flush; ``refuse`` maps a value length threshold to an error code."""

    fail_code: int | None = None
    max_bytes: int | None = None
    buffer_errors: int = 0
    undelivered: bool = False
    produced: list[dict[str, Any]] = field(default_factory=list)
    _queue: list[tuple[Any, dict[str, Any]]] = field(default_factory=list)
    polls: int = 0

    def produce(self, topic: str, **kwargs: Any) -> None:
        if self.buffer_errors:
            self.buffer_errors -= 1
            raise BufferError("queue full")
        self._queue.append((kwargs.pop("on_delivery"), {"topic": topic, **kwargs}))

    def poll(self, timeout: float = 0) -> int:
        self.polls += 1
        return 0

    def flush(self, timeout: float = 0) -> int:
        if self.undelivered:
            return len(self._queue)
        queue, self._queue = self._queue, []
        for callback, message in queue:
            size = len(message["value"] or b"")
            if self.max_bytes is not None and size > self.max_bytes:
                callback(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), None)
            elif self.fail_code is not None:
                callback(KafkaError(self.fail_code), None)
            else:
                self.produced.append(message)
                callback(None, None)
        return 0


def poison() -> PoisonMessage:
    return PoisonMessage("schema_violation", "status: Input should be 'pending'")


def test_headers_keep_the_original_ones_and_add_where_and_why() -> None:
    when = datetime(2025, 1, 10, 12, 0, tzinfo=UTC)
    headers = dlq_headers(FakeMessage(), poison(), "order-processors", failed_at=when)
    assert headers[0] == ("schema-version", b"1")
    assert header_map(headers) == {
        "dlq-original-topic": "food-orders",
        "dlq-original-partition": "2",
        "dlq-original-offset": "41",
        "dlq-original-timestamp": "1736510400000",
        "dlq-error-class": "schema_violation",
        "dlq-reason": "status: Input should be 'pending'",
        "dlq-consumer-group": "order-processors",
        "dlq-failed-at": "2025-01-10T12:00:00.000+00:00",
    }
    assert all(isinstance(value, bytes) for _, value in headers)


def test_headers_of_a_message_without_headers() -> None:
    headers = dlq_headers(FakeMessage(_headers=None), poison(), "g")
    assert next(name for name, _ in headers) == "dlq-original-topic"


def test_dict_headers_are_accepted() -> None:
    headers = dlq_headers(FakeMessage(_headers={"a": b"1"}), poison(), "g")
    assert headers[0] == ("a", b"1")


def test_a_long_reason_is_cut_on_a_character_boundary() -> None:
    reason = "é" * MAX_REASON_BYTES  # two bytes each: the cut lands mid-character
    headers = header_map(dlq_headers(FakeMessage(), PoisonMessage("x", reason), "g"))
    assert len(headers["dlq-reason"].encode()) <= MAX_REASON_BYTES
    assert set(headers["dlq-reason"]) == {"é"}


def test_send_then_flush_produces_original_key_and_value() -> None:
    producer = FakeProducer()
    dlq = DeadLetterQueue(producer, "food-orders.dlq", "g")
    message = FakeMessage(_key=None, _value=b"\xff\xfe")
    dlq.send(message, poison())
    assert producer.produced == []  # nothing is confirmed before flush
    assert dlq.flush() == 1
    (produced,) = producer.produced
    assert produced["topic"] == "food-orders.dlq"
    assert produced["key"] is None
    assert produced["value"] == b"\xff\xfe"
    assert header_map(produced["headers"])["dlq-original-offset"] == "41"
    assert dlq.flush() == 0  # nothing pending any more


def test_a_refused_delivery_is_fatal() -> None:
    dlq = DeadLetterQueue(FakeProducer(fail_code=KafkaError.TOPIC_AUTHORIZATION_FAILED), "d", "g")
    dlq.send(FakeMessage(), poison())
    with pytest.raises(FatalError, match="dead-letter topic d is not writable"):
        dlq.flush()


def test_no_delivery_report_in_time_is_fatal() -> None:
    dlq = DeadLetterQueue(FakeProducer(undelivered=True), "d", "g", flush_timeout_s=0.01)
    dlq.send(FakeMessage(), poison())
    with pytest.raises(FatalError, match="no delivery report in time"):
        dlq.flush()


def test_a_full_local_queue_is_waited_out() -> None:
    producer = FakeProducer(buffer_errors=3)
    dlq = DeadLetterQueue(producer, "d", "g")
    dlq.send(FakeMessage(), poison())
    assert producer.polls == 3
    assert dlq.flush() == 1


def test_a_message_too_large_for_the_dlq_is_resent_truncated() -> None:
    producer = FakeProducer(max_bytes=TRUNCATED_VALUE_BYTES)
    dlq = DeadLetterQueue(producer, "d", "g")
    dlq.send(FakeMessage(_value=b"x" * (TRUNCATED_VALUE_BYTES * 3)), poison())
    assert dlq.flush() == 1
    (produced,) = producer.produced
    assert len(produced["value"]) == TRUNCATED_VALUE_BYTES
    assert (
        dict(produced["headers"])[HEADER_VALUE_TRUNCATED] == str(TRUNCATED_VALUE_BYTES * 3).encode()
    )


def test_a_message_refused_as_too_large_at_produce_time_is_truncated() -> None:
    class Refusing(FakeProducer):
        def produce(self, topic: str, **kwargs: Any) -> None:
            if len(kwargs["value"]) > TRUNCATED_VALUE_BYTES:
                raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
            super().produce(topic, **kwargs)

    producer = Refusing()
    dlq = DeadLetterQueue(producer, "d", "g")
    dlq.send(FakeMessage(_value=b"y" * (TRUNCATED_VALUE_BYTES + 1)), poison())
    assert dlq.flush() == 1
    assert len(producer.produced[0]["value"]) == TRUNCATED_VALUE_BYTES


def test_another_produce_error_is_fatal() -> None:
    class Broken(FakeProducer):
        def produce(self, topic: str, **kwargs: Any) -> None:
            raise KafkaException(KafkaError(KafkaError._UNKNOWN_TOPIC))

    with pytest.raises(FatalError, match="cannot produce to dead-letter topic"):
        DeadLetterQueue(Broken(), "d", "g").send(FakeMessage(), poison())
