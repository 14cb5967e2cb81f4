"""Batch de-duplication, row building, payload comparison, stats and backoff: pure parts."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from foodpipe.consumer.backoff import Backoff
from foodpipe.consumer.stats import ConsumerStats, percentile
from foodpipe.db import (
    _INSERT_SQL,
    WRITE_COLUMNS,
    batch_json,
    dedupe,
    differing_fields,
)
from foodpipe.models import Order
from tests.poison import HOSTILE_VALID, order_dict, valid_order


def test_dedupe_keeps_the_first_occurrence_in_order() -> None:
    firsts, repeats = dedupe(["a", "b", "a", "c", "b", "a"])
    assert firsts == [0, 1, 3]
    assert repeats == [2, 4, 5]


def test_dedupe_of_nothing_and_of_unique_ids() -> None:
    assert dedupe([]) == ([], [])
    assert dedupe(["x", "y"]) == ([0, 1], [])


def test_the_insert_is_one_idempotent_statement_without_processed_at() -> None:
    assert "processed_at" not in WRITE_COLUMNS
    assert WRITE_COLUMNS[0] == "order_id"
    assert _INSERT_SQL.count("%s") == 1  # the whole batch is one JSON parameter
    assert "jsonb_to_recordset(%s::jsonb)" in _INSERT_SQL
    assert _INSERT_SQL.endswith("ON CONFLICT (order_id) DO NOTHING RETURNING order_id")
    record = _INSERT_SQL.split(" AS o(", 1)[1].split(")", 1)[0]
    assert [column.split()[0] for column in record.split(", ")] == list(WRITE_COLUMNS)


def test_batch_json_is_one_object_per_order_with_the_columns() -> None:
    order = valid_order(1)
    [row] = json.loads(batch_json([order]))
    assert set(row) == set(WRITE_COLUMNS)
    assert row["order_id"] == order.order_id
    assert row["total_amount"] == "27.00"  # a string: no float between us and NUMERIC
    assert datetime.fromisoformat(row["created_at"]) == order.created_at
    assert row["items"] == [
        {"name": "Margherita Pizza", "quantity": 2, "unit_price": "12.50"},
        {"name": "Cola", "quantity": 1, "unit_price": "2.00"},
    ]


def _as_row(obj: dict[str, object]) -> dict[str, object]:
    """A batch_json object read the way PostgreSQL reads it (numeric, timestamptz)."""
    return {
        **obj,
        "total_amount": Decimal(str(obj["total_amount"])),
        "created_at": datetime.fromisoformat(str(obj["created_at"])),
    }


@pytest.mark.parametrize(
    "order",
    [
        valid_order(1),
        valid_order(2, items=(("Soup", 3, "4.5"), ("Bread", 1, "2"), ("Tea", 2, "0.01"))),
        Order.model_validate(
            {
                **order_dict(3, items=(("Cake", 1, "10.00"),)),
                "total_amount": 10,
                "status": "delivered",
                "created_at": "2026-11-22T09:30:00.5+02:00",
            }
        ),
        *HOSTILE_VALID,
    ],
    ids=lambda o: o.order_id,
)
def test_batch_json_rows_equal_the_contracts_to_row(order: Order) -> None:
    [obj] = json.loads(batch_json([order]))
    assert _as_row(obj) == order.to_row()


def test_batch_json_keeps_order_and_length() -> None:
    orders = [valid_order(n) for n in range(1, 6)]
    assert [o["order_id"] for o in json.loads(batch_json(orders))] == [o.order_id for o in orders]
    assert json.loads(batch_json([])) == []


def test_batch_json_is_ascii_so_any_text_survives_the_statement() -> None:
    text = batch_json(HOSTILE_VALID)
    assert text.isascii()
    rows = json.loads(text)
    for order, row in zip(HOSTILE_VALID, rows, strict=True):
        assert [i["name"] for i in row["items"]] == [i.name for i in order.items]


def stored(order_n: int, **changes: object) -> dict[str, object]:
    row = valid_order(order_n).to_row()
    row.update(changes)
    return row


def test_an_identical_stored_row_is_no_conflict() -> None:
    assert differing_fields(valid_order(1), stored(1)) == ()


def test_equal_values_in_another_notation_are_no_conflict() -> None:
    order = valid_order(1)
    row = stored(
        1,
        total_amount=Decimal("27.0"),
        created_at=order.created_at.astimezone(timezone(timedelta(hours=2))),
        items=[
            {"name": "Margherita Pizza", "quantity": 2, "unit_price": "12.5"},
            {"name": "Cola", "quantity": 1, "unit_price": "2"},
        ],
    )
    assert differing_fields(order, row) == ()


def test_changed_fields_are_named() -> None:
    order = valid_order(1)
    row = stored(
        1,
        customer_id="CUST-00099",
        status="delivered",
        created_at=datetime(2020, 1, 1, tzinfo=UTC),
        items=[{"name": "Soup", "quantity": 1, "unit_price": "27.00"}],
    )
    assert differing_fields(order, row) == ("customer_id", "items", "status", "created_at")


def test_unreadable_stored_items_are_a_conflict() -> None:
    assert differing_fields(valid_order(1), stored(1, items=[{"bogus": 1}])) == ("items",)


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) == 0.0


def test_stats_summarise_a_window_and_start_a_new_one() -> None:
    now = [100.0]
    stats = ConsumerStats(clock=lambda: now[0])
    stats.written = 40
    stats.duplicates = 2
    for latency in (0.010, 0.020, 0.030, 0.200):
        stats.record_batch(latency)
    stats.record_dead_letter("json_invalid")
    stats.record_dead_letter("json_invalid")
    stats.record_dead_letter("oversize")
    now[0] = 104.0
    assert not stats.due(5.0)
    now[0] = 105.0
    assert stats.due(5.0)
    summary = stats.roll_window()
    assert summary["written"] == 40
    assert summary["duplicates"] == 2
    assert summary["dead_lettered"] == 3
    assert summary["dead_lettered_by_class"] == {"json_invalid": 2, "oversize": 1}
    assert summary["batches"] == 4
    assert summary["batch_p50_ms"] == 20.0
    assert summary["batch_p99_ms"] == 200.0
    assert summary["rate_per_s"] == 8.0
    assert not stats.due(5.0)
    stats.written = 50
    now[0] = 110.0
    later = stats.roll_window()
    assert later["rate_per_s"] == 2.0
    assert later["window_batches"] == 0
    assert later["batches"] == 4  # totals are since start-up


def test_backoff_doubles_to_its_cap_with_downward_jitter() -> None:
    backoff = Backoff(initial=0.5, maximum=30.0, jitter=0.0)
    assert [backoff.next() for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    backoff.reset()
    assert backoff.next() == 0.5


def test_backoff_jitter_stays_within_bounds_and_never_overflows() -> None:
    backoff = Backoff(initial=0.5, maximum=30.0, jitter=0.2, rng=random.Random(7))
    delays = [backoff.next() for _ in range(5000)]
    assert all(0.4 <= d <= 30.0 for d in delays)
    assert all(d >= 24.0 for d in delays[10:])
