"""``foodpipe dlq list|replay`` against real services.

How a rule is "relaxed" in these tests: the table gets an extra CHECK constraint
(``total_amount < 50``, as a migration might add), so the consumer dead-letters the
bigger orders as ``db_constraint``; then the constraint is dropped, and a replay
writes them. The operator-level relaxation, ``--accept key_mismatch``, is tested too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import text

from foodpipe.audit import audit
from foodpipe.models import Order
from tests.conftest import Pipeline
from tests.poison import POISON, produce_records, record, valid_order
from tests.support import (
    committed_offsets,
    end_offsets,
    group_lag,
    run_foodpipe,
    spawn_foodpipe,
    stop_process,
    wait_until,
)

CHECK = "ALTER TABLE orders ADD CONSTRAINT orders_total_below_50 CHECK (total_amount < 50)"
RELAX = "ALTER TABLE orders DROP CONSTRAINT orders_total_below_50"


def big_order(n: int) -> Order:
    return valid_order(n, items=(("Family Pizza", 4, "15.00"),))  # 60.00


def dlq(pipe: Pipeline, *args: str) -> dict[str, Any]:
    result = run_foodpipe(["dlq", *args, "--json"], pipe.env, timeout=120)
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def consume_until_drained(pipe: Pipeline, rows: int, log: Path) -> None:
    consumer = spawn_foodpipe(["consume"], pipe.env, log)
    try:
        wait_until(
            lambda: pipe.row_count() == rows,
            timeout=90,
            message=lambda: f"{rows} rows (got {pipe.row_count()})",
        )
        wait_until(
            lambda: group_lag(pipe.bootstrap, pipe.group, pipe.topic) == 0,
            timeout=60,
            message="lag 0",
        )
    finally:
        assert stop_process(consumer) == 0, log.read_text()[-3000:]


def test_replay_after_a_rule_is_relaxed_writes_once_and_then_nothing(
    make_pipeline: Callable[..., Pipeline], log_dir: Path
) -> None:
    pipe = make_pipeline()
    with pipe.admin_engine.begin() as conn:
        conn.execute(text(CHECK))
    small = [valid_order(n) for n in range(1, 31)]
    big = [big_order(n) for n in range(101, 111)]
    poison = [c for c in POISON if c.error_class in ("json_invalid", "key_mismatch", "not_utf8")]
    records: list[tuple[bytes | None, bytes | None]] = []
    for i, order in enumerate(small):
        records.append(record(order))
        if i < len(big):
            records.append(record(big[i]))
        if i < len(poison):
            records.append((poison[i].key, poison[i].value))
    produce_records(pipe.bootstrap, pipe.topic, records)
    consume_until_drained(pipe, len(small), log_dir / "consumer.log")
    dead = len(big) + len(poison)
    wait_until(
        lambda: sum(end_offsets(pipe.bootstrap, pipe.dlq_topic).values()) == dead,
        timeout=30,
        message=f"{dead} dead letters",
    )

    # list: every dead letter with its origin and reason; filters narrow it.
    listing = dlq(pipe, "list")
    assert listing["total"] == listing["matched"] == dead
    by_class: dict[str, int] = {}
    for letter in listing["messages"]:
        by_class[letter["error_class"]] = by_class.get(letter["error_class"], 0) + 1
        assert letter["original_topic"] == pipe.topic
        assert letter["original_offset"] is not None
        assert letter["reason"]
    assert by_class["db_constraint"] == len(big)
    refused = dlq(pipe, "list", "--error-class", "db_constraint")
    assert refused["matched"] == len(big)
    assert {m["order_id"] for m in refused["messages"]} == {o.order_id for o in big}
    assert all("orders_total_below_50" in m["reason"] for m in refused["messages"])
    assert dlq(pipe, "list", "--reason", "ORDERS_TOTAL_BELOW")["matched"] == len(big)

    # Dry run: says it would write them, writes and commits nothing.
    dry = dlq(pipe, "replay", "--error-class", "db_constraint", "--dry-run")
    assert dry["counts"].get("would write") == len(big)
    assert pipe.row_count() == len(small)
    replay_group = f"{pipe.group}-dlq-replay"
    assert all(
        o < 0 for o in committed_offsets(pipe.bootstrap, replay_group, pipe.dlq_topic).values()
    )

    # Before the rule is relaxed, PostgreSQL still refuses them: nothing written.
    still = dlq(pipe, "replay", "--error-class", "db_constraint")
    assert still["counts"] == {"refused by PostgreSQL": len(big), "not selected": len(poison)}
    assert pipe.row_count() == len(small)

    # Relax the rule; replay writes each refused order exactly once.
    with pipe.admin_engine.begin() as conn:
        conn.execute(text(RELAX))
    first = dlq(pipe, "replay", "--error-class", "db_constraint")
    assert first["counts"]["written"] == len(big)
    assert sorted(pipe.order_ids()) == sorted(o.order_id for o in small + big)

    # A second replay writes nothing.
    second = dlq(pipe, "replay", "--error-class", "db_constraint")
    assert second["counts"].get("written", 0) == 0
    assert pipe.row_count() == len(small) + len(big)

    # The operator may accept a wrong key (the order itself is valid); once.
    mismatch = [c for c in poison if c.error_class == "key_mismatch"]
    keyed = dlq(pipe, "replay", "--error-class", "key_mismatch", "--accept", "key_mismatch")
    assert keyed["counts"]["written"] == len(mismatch) == 1
    again = dlq(pipe, "replay", "--error-class", "key_mismatch", "--accept", "key_mismatch")
    assert again["counts"].get("written", 0) == 0
    # Without --accept the key rule holds.
    strict = dlq(pipe, "replay", "--error-class", "key_mismatch", "--from-start")
    assert strict["counts"] == {"still invalid": 1, "not selected": dead - 1}
    # Everything else stays dead: not even a relaxed key makes bad JSON an order.
    rest = dlq(pipe, "replay", "--error-class", "json_invalid", "--error-class", "not_utf8")
    assert rest["counts"].get("written", 0) == 0
    assert rest["counts"]["still invalid"] == len(poison) - len(mismatch)

    with pipe.admin_engine.connect() as conn:
        dupes = conn.execute(
            text("SELECT order_id FROM orders GROUP BY order_id HAVING count(*) > 1")
        ).all()
    assert dupes == []
    # The audit explains the replayed rows: consistent, with 11 recovered.
    report = audit(pipe.settings, timeout_s=120)
    assert report.ok, report.to_dict()
    assert report.recovered == len(big) + len(mismatch)


def test_replay_progress_is_a_committed_offset(
    make_pipeline: Callable[..., Pipeline], log_dir: Path
) -> None:
    """A DLQ of replayable letters only: the mark reaches the log end, and a second
    replay does not even read them."""
    pipe = make_pipeline()
    with pipe.admin_engine.begin() as conn:
        conn.execute(text(CHECK))
    big = [big_order(n) for n in range(201, 213)]
    produce_records(pipe.bootstrap, pipe.topic, [record(o) for o in big])
    consumer = spawn_foodpipe(["consume"], pipe.env, log_dir / "consumer.log")
    try:
        wait_until(
            lambda: group_lag(pipe.bootstrap, pipe.group, pipe.topic) == 0,
            timeout=90,
            message="lag 0",
        )
    finally:
        assert stop_process(consumer) == 0
    with pipe.admin_engine.begin() as conn:
        conn.execute(text(RELAX))

    first = dlq(pipe, "replay")
    assert first["counts"] == {"written": len(big)}
    ends = end_offsets(pipe.bootstrap, pipe.dlq_topic)
    group = f"{pipe.group}-dlq-replay"
    assert committed_offsets(pipe.bootstrap, group, pipe.dlq_topic) == ends
    assert {int(p): o for p, o in first["committed"].items()} == ends

    second = dlq(pipe, "replay")
    assert second["messages"] == []
    assert second["counts"] == {}
    # --from-start looks again, and the idempotent write still adds nothing.
    again = dlq(pipe, "replay", "--from-start")
    assert again["counts"] == {"already stored": len(big)}
    assert pipe.row_count() == len(big)


def test_bad_offset_range_is_one_line_and_exit_2(pipeline: Pipeline) -> None:
    result = run_foodpipe(["dlq", "list", "--offset-range", "20-10"], pipeline.env)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "start is after the end" in result.stderr
