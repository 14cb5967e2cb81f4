"""End to end, the original plan's success criterion, with the real commands:
``foodpipe produce --count 100`` -> Kafka -> ``foodpipe consume`` -> 100 rows in
PostgreSQL whose content equals what was produced.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from foodpipe.models import Order, OrderItem
from tests.conftest import Pipeline
from tests.support import (
    consume_all,
    group_lag,
    run_foodpipe,
    spawn_foodpipe,
    stop_process,
    wait_until,
)


def test_produce_100_then_consume_gives_100_equal_rows(
    pipeline: Pipeline, log_dir: Path, tmp_path: Path
) -> None:
    env = {**pipeline.env, "PRODUCER_STATE_DIR": str(tmp_path / "producer-state")}
    produced = run_foodpipe(["produce", "--count", "100", "--rate", "0"], env, timeout=120)
    assert produced.returncode == 0, produced.stderr

    # What the broker holds is what the producer confirmed.
    messages = consume_all(pipeline.bootstrap, pipeline.topic, 100)
    sent = {}
    for message in messages:
        order = Order.model_validate_json(message.value() or b"")
        assert message.key() == order.customer_id.encode()
        sent[order.order_id] = order
    assert len(sent) == 100

    log = log_dir / "consumer.log"
    consumer = spawn_foodpipe(["consume"], env, log)
    try:
        wait_until(lambda: pipeline.row_count() == 100, timeout=60, message="100 rows")
        wait_until(
            lambda: group_lag(pipeline.bootstrap, pipeline.group, pipeline.topic) == 0,
            timeout=30,
            message="lag 0",
        )
    finally:
        code = stop_process(consumer)
    assert code == 0, log.read_text()[-3000:]

    with pipeline.admin_engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT order_id, customer_id, items, total_amount, status, created_at,"
                " processed_at FROM orders"
            )
        ).mappings()
        stored = {row["order_id"]: row for row in rows}
    assert set(stored) == set(sent)
    for order_id, order in sent.items():
        row = stored[order_id]
        assert row["customer_id"] == order.customer_id
        assert [OrderItem.model_validate(i) for i in row["items"]] == list(order.items)
        assert row["total_amount"] == order.total_amount
        assert row["status"] == order.status.value == "pending"
        assert row["created_at"] == order.created_at
        assert row["processed_at"] >= row["created_at"]
