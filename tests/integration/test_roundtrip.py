"""The foundation's proof: real Kafka and real PostgreSQL, round-tripped."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal

from confluent_kafka import Producer
from sqlalchemy import insert, select, text

from foodpipe.db import orders
from foodpipe.kafka import producer_config
from foodpipe.models import Order, OrderItem

from ..conftest import Pipeline
from ..support import consume_all


def _order(n: int) -> Order:
    item = OrderItem(name="Pad Thai", quantity=1 + n % 3, unit_price=Decimal("11.25"))
    return Order(
        order_id=f"ORD-20261122-{n:05d}",
        customer_id=f"CUST-{n % 7 + 1:05d}",
        items=[item],
        total_amount=item.line_total,
        created_at=datetime(2026, 11, 22, 12, 0, n % 60, tzinfo=UTC),
    )


def test_keyed_json_roundtrips_through_kafka_and_postgres(pipeline: Pipeline) -> None:
    sent = [_order(n) for n in range(1, 61)]
    producer = Producer(producer_config(pipeline.settings))
    for order in sent:
        producer.produce(pipeline.topic, key=order.customer_id, value=order.to_json())
    assert producer.flush(30) == 0

    messages = consume_all(pipeline.bootstrap, pipeline.topic, len(sent))
    partitions_by_key: dict[str, set[int]] = defaultdict(set)
    received = []
    for msg in messages:
        key = msg.key().decode()
        partitions_by_key[key].add(msg.partition())
        order = Order.model_validate_json(msg.value())
        assert order.customer_id == key
        received.append(order)
    assert sorted(o.order_id for o in received) == sorted(o.order_id for o in sent)
    # The key decides the partition: every customer's orders sit on exactly one partition.
    assert all(len(parts) == 1 for parts in partitions_by_key.values()), partitions_by_key
    # 7 customers over 3 partitions: more than one partition is in use.
    assert len(set().union(*partitions_by_key.values())) > 1

    with pipeline.engine.begin() as conn:
        conn.execute(insert(orders), [o.to_row() for o in received])
    with pipeline.engine.connect() as conn:
        rows = conn.execute(select(orders).order_by(orders.c.order_id)).mappings().all()
    assert len(rows) == len(sent)
    by_id = {o.order_id: o for o in sent}
    for row in rows:
        original = by_id[row["order_id"]]
        assert row["customer_id"] == original.customer_id
        assert row["total_amount"] == original.total_amount
        assert row["created_at"] == original.created_at
        assert row["items"] == json.loads(original.model_dump_json())["items"]
        assert row["processed_at"] is not None


def test_app_role_is_least_privilege(pipeline: Pipeline) -> None:
    """The services' role may insert and read orders, and nothing else."""
    with pipeline.engine.connect() as conn:
        privileges = set(
            conn.execute(
                text(
                    "SELECT privilege_type FROM information_schema.role_table_grants "
                    "WHERE table_name = 'orders' AND grantee = current_user"
                )
            ).scalars()
        )
    assert privileges == {"SELECT", "INSERT"}
