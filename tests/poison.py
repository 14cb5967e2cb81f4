"""A reusable corpus of bad and awkward messages, and helpers to send them.

``POISON`` covers every kind of bad input in docs' reliability item 11 (and the natural
database refusal of item 12). Each case is ``(label, key, value, error_class)``: the
consumer must dead-letter it with exactly that ``dlq-error-class`` and write every valid
neighbour. ``HOSTILE_VALID`` are *valid* orders full of quotes, backslashes, SQL-looking
text, placeholders and emoji: they must be stored verbatim, not rejected.

The unit tests run ``POISON`` through the decoder; the integration and fault-injection
suites interleave it with valid orders on a real topic.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any, NamedTuple

from confluent_kafka import KafkaError, Message, Producer

from foodpipe.models import Order, kafka_headers

#: Near the broker's default 1 MB message limit, so it exercises the fetch and DLQ path.
NEAR_LIMIT_BYTES = 900 * 1024


def order_dict(
    n: int,
    customer: int | None = None,
    day: str = "20250110",
    items: Sequence[tuple[str, int, str]] = (("Margherita Pizza", 2, "12.50"), ("Cola", 1, "2.00")),
    status: str = "pending",
) -> dict[str, Any]:
    """A valid order as a JSON-ready dict; ``n`` makes the order_id unique."""
    lines = [{"name": name, "quantity": qty, "unit_price": price} for name, qty, price in items]
    total = sum(Decimal(price) * qty for _, qty, price in items)
    return {
        "order_id": f"ORD-{day}-{n:05d}",
        "customer_id": f"CUST-{(customer if customer is not None else n % 100) + 1:05d}",
        "items": lines,
        "total_amount": f"{total:.2f}",
        "status": status,
        "created_at": f"2025-01-10T12:{n // 60 % 60:02d}:{n % 60:02d}.123456+00:00",
    }


def valid_order(n: int, **kwargs: Any) -> Order:
    return Order.model_validate(order_dict(n, **kwargs))


def record(order: Order) -> tuple[bytes, bytes]:
    """``(key, value)`` exactly as the producer sends an order."""
    return order.customer_id.encode(), order.to_json()


def _raw(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode()


def _with(n: int, **changes: Any) -> bytes:
    data = order_dict(n)
    data.update(changes)
    return _raw(data)


def _key(n: int) -> bytes:
    return str(order_dict(n)["customer_id"]).encode()


def _item_changed(n: int, **changes: Any) -> bytes:
    data = order_dict(n, items=(("Margherita Pizza", 2, "12.50"),))
    data["items"][0].update(changes)
    return _raw(data)


def _missing(n: int, *fields: str) -> bytes:
    data = order_dict(n)
    for name in fields:
        del data[name]
    return _raw(data)


class PoisonCase(NamedTuple):
    label: str
    key: bytes | None
    value: bytes | None
    error_class: str


# Order numbers 90000+ so they never collide with the valid orders a test produces.
POISON: list[PoisonCase] = [
    # malformed JSON
    PoisonCase("truncated json", _key(90001), _with(90001)[:-20], "json_invalid"),
    PoisonCase("not json at all", _key(90002), b"hello, kafka", "json_invalid"),
    PoisonCase("trailing comma", _key(90003), _with(90003)[:-1] + b",}", "json_invalid"),
    PoisonCase(
        "lone surrogate escape",
        _key(90004),
        _with(90004).replace(b"Cola", b"\\ud800"),
        "json_invalid",
    ),
    # valid JSON that is not an object
    PoisonCase("json array", _key(90005), b'[{"order_id": "ORD-20250110-90005"}]', "not_object"),
    PoisonCase("json string", _key(90006), b'"ORD-20250110-90006"', "not_object"),
    PoisonCase("json number", _key(90007), b"42", "not_object"),
    PoisonCase("json null", _key(90008), b"null", "not_object"),
    # missing fields, wrong types
    PoisonCase("empty object", _key(90009), b"{}", "schema_violation"),
    PoisonCase("missing items", _key(90010), _missing(90010, "items"), "schema_violation"),
    PoisonCase(
        "missing total and created_at",
        _key(90011),
        _missing(90011, "total_amount", "created_at"),
        "schema_violation",
    ),
    PoisonCase(
        "quantity as string", _key(90012), _item_changed(90012, quantity="2"), "schema_violation"
    ),
    PoisonCase("items not a list", _key(90013), _with(90013, items="pizza"), "schema_violation"),
    PoisonCase(
        "total as object", _key(90014), _with(90014, total_amount={"v": 1}), "schema_violation"
    ),
    PoisonCase(
        "naive created_at",
        _key(90015),
        _with(90015, created_at="2025-01-10T12:00:00"),
        "schema_violation",
    ),
    PoisonCase(
        "empty items", _key(90016), _with(90016, items=[], total_amount="1.00"), "schema_violation"
    ),
    # business rules
    PoisonCase("total zero", _key(90017), _with(90017, total_amount="0.00"), "business_rule"),
    PoisonCase("total negative", _key(90018), _with(90018, total_amount="-27.00"), "business_rule"),
    PoisonCase(
        "total != sum of items", _key(90019), _with(90019, total_amount="26.99"), "business_rule"
    ),
    PoisonCase("quantity zero", _key(90020), _item_changed(90020, quantity=0), "business_rule"),
    PoisonCase(
        "quantity negative", _key(90021), _item_changed(90021, quantity=-1), "business_rule"
    ),
    PoisonCase(
        "unit price zero", _key(90022), _item_changed(90022, unit_price="0.00"), "business_rule"
    ),
    # unknown status, id formats
    PoisonCase(
        "unknown status", _key(90023), _with(90023, status="teleported"), "schema_violation"
    ),
    PoisonCase(
        "order_id bad format", _key(90024), _with(90024, order_id="ORDER-1"), "schema_violation"
    ),
    PoisonCase(
        "order_id impossible date",
        _key(90025),
        _with(90025, order_id="ORD-20251399-90025"),
        "schema_violation",
    ),
    PoisonCase(
        "customer_id bad format", b"CUST-1", _with(90026, customer_id="CUST-1"), "schema_violation"
    ),
    # non-UTF-8
    PoisonCase("binary garbage", _key(90027), b"\xff\xfe\x00\x01\x80\x81", "not_utf8"),
    PoisonCase(
        "latin-1 text",
        _key(90028),
        json.dumps(
            order_dict(90028, items=(("Crème brûlée", 1, "6.00"),)), ensure_ascii=False
        ).encode("latin-1"),
        "not_utf8",
    ),
    # empty value / tombstone
    PoisonCase("tombstone", _key(90029), None, "empty_value"),
    PoisonCase("zero bytes", _key(90030), b"", "empty_value"),
    # keys
    PoisonCase("null key", None, _with(90031), "missing_key"),
    PoisonCase("key is not the customer", b"CUST-99999", _with(90032), "key_mismatch"),
    # size
    PoisonCase(
        "near the size limit",
        _key(90033),
        _with(90033, note="x" * NEAR_LIMIT_BYTES),
        "oversize",
    ),
    # hostile strings where they are not allowed
    PoisonCase(
        "sql in order_id",
        _key(90034),
        _with(90034, order_id="ORD-20250110-1'); DROP TABLE orders;--"),
        "schema_violation",
    ),
    PoisonCase(
        "quotes and backslash in customer_id",
        b'CUST-"\\1',
        _with(90035, customer_id='CUST-"\\1'),
        "schema_violation",
    ),
    PoisonCase("emoji status", _key(90036), _with(90036, status="🍕"), "schema_violation"),
    # valid to pydantic, refused by PostgreSQL: JSONB cannot hold a NUL character
    PoisonCase(
        "NUL in item name",
        _key(90037),
        _raw(order_dict(90037, items=(("Pizza\u0000", 1, "9.00"),))),
        "db_constraint",
    ),
]

#: Valid orders that must be stored exactly as sent (numbers 80000+).
HOSTILE_VALID: list[Order] = [
    valid_order(80001, items=(("Robert'); DROP TABLE orders;--", 1, "3.00"),)),
    valid_order(80002, items=(('Say "cheese" \\ or \\\\ not', 2, "4.25"),)),
    valid_order(80003, items=(("100% beef %s %(name)s {0}", 1, "9.99"),)),
    valid_order(80004, items=(("🍕 Pizza 🍺 Bier — ünïcödé ✓", 3, "7.10"),)),
    valid_order(80005, items=(("line\nbreak\ttab", 1, "2.00"), ("שלום مرحبا", 1, "2.50"))),
    valid_order(80006, items=(("x" * 100, 1, "15.00"),)),
]


def produce_records(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes | None]],
    headers: list[tuple[str, bytes]] | None = None,
    timeout: float = 60.0,
) -> list[tuple[int, int]]:
    """Produce ``(key, value)`` pairs in order; returns each one's (partition, offset).

    Idempotent and ``acks=all`` like the real producer; fails if any delivery fails.
    """
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.max.bytes": 2 * 1024 * 1024,
        }
    )
    results: list[tuple[int, int] | None] = []
    errors: list[str] = []

    def delivered(index: int) -> Any:
        def callback(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                errors.append(f"record {index}: {error.str()}")
            else:
                results[index] = (int(message.partition() or 0), int(message.offset() or 0))

        return callback

    for index, (key, value) in enumerate(records):
        results.append(None)
        while True:
            try:
                producer.produce(
                    topic,
                    key=key,
                    value=value,
                    headers=headers if headers is not None else kafka_headers(),
                    on_delivery=delivered(index),
                )
                break
            except BufferError:
                producer.poll(0.5)
        producer.poll(0)
    remaining = producer.flush(timeout)
    assert remaining == 0, f"{remaining} records not delivered within {timeout}s"
    assert not errors, errors
    return [r for r in results if r is not None]
