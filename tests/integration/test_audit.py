"""``foodpipe audit`` against real services: clean after a healthy run, and it catches
an injected inconsistency (a deleted row, an extra row, unconsumed orders)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from foodpipe.audit import audit
from tests.conftest import Pipeline
from tests.poison import POISON, produce_records, record, valid_order
from tests.support import group_lag, run_foodpipe, spawn_foodpipe, stop_process, wait_until

VALID = 200


@pytest.fixture
def drained(make_pipeline: Callable[..., Pipeline], log_dir: Path) -> Pipeline:
    """A pipeline whose consumer wrote 200 valid orders and dead-lettered the corpus."""
    pipe = make_pipeline()
    orders = [valid_order(n) for n in range(1, VALID + 1)]
    records: list[tuple[bytes | None, bytes | None]] = [record(o) for o in orders]
    # Poison interleaved with valid orders, as in production.
    for i, case in enumerate(POISON):
        records.insert(i * 5, (case.key, case.value))
    produce_records(pipe.bootstrap, pipe.topic, records)
    consumer = spawn_foodpipe(["consume"], pipe.env, log_dir / "consumer.log")
    try:
        refused = sum(1 for case in POISON if case.error_class == "db_constraint")
        wait_until(
            lambda: pipe.row_count() == VALID,
            timeout=90,
            message=lambda: f"{VALID} rows (got {pipe.row_count()})",
        )
        wait_until(
            lambda: group_lag(pipe.bootstrap, pipe.group, pipe.topic) == 0,
            timeout=60,
            message="lag 0",
        )
        assert refused == 1
    finally:
        assert stop_process(consumer) == 0, (log_dir / "consumer.log").read_text()[-3000:]
    return pipe


def run_audit(pipe: Pipeline, *args: str) -> tuple[int, dict[str, Any]]:
    result = run_foodpipe(["audit", "--json", *args], pipe.env, timeout=180)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def test_audit_is_clean_after_a_healthy_run(drained: Pipeline) -> None:
    code, report = run_audit(drained)
    assert code == 0, report
    assert report["ok"] is True
    assert report["messages"] == VALID + len(POISON)
    # The NUL-in-name order is valid to the model, refused by PostgreSQL.
    assert report["valid_messages"] == VALID + 1
    assert report["invalid_messages"] == len(POISON) - 1
    assert report["refused_by_database"] == 1
    assert report["rows"] == VALID
    assert report["lost"] == report["extra"] == report["duplicate_rows"] == 0
    assert report["dlq_records"] == len(POISON)
    assert report["poison_not_dead_lettered"] == report["unexplained_dead_letters"] == 0
    assert report["lag"] == 0


def test_audit_fails_on_a_deleted_row_and_names_it(drained: Pipeline) -> None:
    victim = "ORD-20250110-00042"
    with drained.admin_engine.begin() as conn:
        deleted = conn.execute(text("DELETE FROM orders WHERE order_id = :id"), {"id": victim})
        assert deleted.rowcount == 1
    code, report = run_audit(drained)
    assert code == 1
    assert report["ok"] is False
    assert report["lost"] == 1
    loss = next(c for c in report["checks"] if c["name"] == "loss")
    assert loss["ok"] is False
    assert loss["sample"] == [victim]

    # The text table says the same, for a human.
    table = run_foodpipe(["audit"], {**drained.env, "COLUMNS": "200"}, timeout=180)
    assert table.returncode == 1
    assert "INCONSISTENT" in table.stdout
    assert victim in table.stdout


def test_audit_fails_on_an_extra_row(drained: Pipeline) -> None:
    ghost = valid_order(99999)
    with drained.admin_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO orders (order_id, customer_id, items, total_amount, status,"
                " created_at) VALUES (:order_id, :customer_id, '[]', 1, 'pending', now())"
            ),
            {"order_id": ghost.order_id, "customer_id": ghost.customer_id},
        )
    report = audit(drained.settings, timeout_s=120)
    assert not report.ok
    assert report.extra == [ghost.order_id]
    assert report.lost == []


def test_unconsumed_orders_are_pending_lag_unless_allowed(drained: Pipeline) -> None:
    late = [valid_order(n) for n in range(5001, 5011)]
    produce_records(drained.bootstrap, drained.topic, [record(o) for o in late])
    report = audit(drained.settings, timeout_s=120)
    assert not report.ok
    assert report.lag == 10
    assert sorted(report.pending) == sorted(o.order_id for o in late)
    assert report.lost == []
    # On a running pipeline, --allow-lag accepts what is merely not consumed yet.
    code, document = run_audit(drained, "--allow-lag")
    assert code == 0, document
    assert document["pending"] == 10
