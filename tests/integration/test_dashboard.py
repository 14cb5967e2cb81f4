"""``foodpipe dashboard`` against real Kafka and PostgreSQL: its JSON, its event stream,
the audit button's endpoint, and what it says while a service is down."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import Pipeline, Stack
from tests.dashboard_support import dashboard
from tests.poison import POISON, produce_records
from tests.support import run_foodpipe, spawn_foodpipe, stop_process

ORDERS = 200


def read_events(url: str, wanted: set[str], timeout: float = 20.0) -> dict[str, dict[str, Any]]:
    """Read ``/events`` until one event of each ``wanted`` kind came; ``{kind: data}``."""
    found: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    with urllib.request.urlopen(url + "/events", timeout=timeout) as stream:  # noqa: S310
        assert stream.headers["content-type"].startswith("text/event-stream")
        kind = None
        for raw in stream:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: ") and kind is not None:
                found[kind] = json.loads(line.removeprefix("data: "))
                if wanted <= set(found):
                    return found
            assert time.monotonic() < deadline, f"events {wanted - set(found)} never came"
    raise AssertionError("the event stream ended")


def test_dashboard_shows_the_pipeline_the_business_and_a_consistent_audit(
    pipeline: Pipeline, log_dir: Path
) -> None:
    poison = [c for c in POISON if c.error_class in ("json_invalid", "business_rule")]
    produced = run_foodpipe(["produce", "--count", str(ORDERS), "--rate", "0"], pipeline.env)
    assert produced.returncode == 0, produced.stderr
    produce_records(pipeline.bootstrap, pipeline.topic, [(c.key, c.value) for c in poison])
    consumer = spawn_foodpipe(["consume"], pipeline.env, log_dir / "consumer.log")
    try:
        with dashboard(pipeline.env, log_dir) as board:
            doc = board.wait_for(
                "pipeline",
                lambda d: (
                    d["status"]["lag"] == 0
                    and d["status"]["database"]["rows"] == ORDERS
                    and len(d["dead_letters"]["latest"]) == len(poison)
                ),
                "lag 0, every row and every dead letter",
                timeout=90,
            )
            assert doc["kafka"] == {"ok": True, "error": None}
            assert doc["postgres"] == {"ok": True, "error": None}
            assert doc["status"]["dlq"]["messages"] == len(poison)
            assert {d["error_class"] for d in doc["dead_letters"]["latest"]} == {
                "json_invalid",
                "business_rule",
            }
            assert all(d["reason"] for d in doc["dead_letters"]["latest"])
            assert set(doc["owners"]) == {"0", "1", "2"}
            assert len(set(doc["owners"].values())) == 1
            assert [len(m["partitions"]) for m in doc["members"]] == [3]
            # All orders were written within the last minute: latency has its samples.
            assert doc["latency"]["samples"] == ORDERS
            assert 0 <= doc["latency"]["p50_ms"] <= doc["latency"]["p99_ms"]

            business = board.wait_for(
                "business",
                lambda b: b.get("orders") == ORDERS,
                "the business view of every order",
                timeout=30,
            )
            assert business["error"] is None
            assert sum(m["orders"] for m in business["per_minute"]) == ORDERS
            assert 1 <= len(business["top_dishes"]) <= 5
            assert 1 <= len(business["top_customers"]) <= 5
            with pipeline.admin_engine.connect() as conn:
                total, average = conn.exec_driver_sql(
                    "SELECT sum(total_amount), round(avg(total_amount), 2) FROM orders"
                ).one()
            assert business["revenue"] == str(total)
            assert business["average_order_value"] == str(average)

            events = read_events(board.url, {"pipeline", "business"})
            assert events["pipeline"]["status"]["lag"] == 0
            assert events["business"]["orders"] == ORDERS

            # The audit button's endpoint: refused without its header, then CONSISTENT.
            status, _ = board.post("/api/audit")
            assert status == 403
            audit = board.run_audit()
            assert audit["verdict"] == "CONSISTENT", audit
            assert audit["error"] is None
            assert {c["name"] for c in audit["checks"]} >= {"loss", "dead letters", "lag"}
    finally:
        assert stop_process(consumer) == 0


def test_dashboard_says_which_service_is_down_and_recovers(
    stack: Stack, pipeline: Pipeline, log_dir: Path
) -> None:
    produced = run_foodpipe(["produce", "--count", "20", "--rate", "0"], pipeline.env)
    assert produced.returncode == 0, produced.stderr
    with dashboard(pipeline.env, log_dir, "--timeout", "2") as board:
        stack.pg_stop()
        try:
            doc = board.wait_for(
                "pipeline",
                lambda d: not d["postgres"]["ok"],
                "the dashboard to report PostgreSQL down",
                timeout=30,
            )
            assert doc["postgres"]["error"].startswith("PostgreSQL")
            assert "Traceback" not in json.dumps(doc)
            assert "foodpipe-test-app" not in json.dumps(doc), "no password reaches the page"
            assert doc["kafka"]["ok"], "Kafka still answers and is shown as such"
            assert doc["status"]["topic"]["log_end"] == 20
            business = board.wait_for(
                "business",
                lambda b: b.get("error"),
                "the business view to report PostgreSQL down",
                timeout=30,
            )
            assert business["error"].startswith("PostgreSQL")
        finally:
            stack.pg_start()
        board.wait_for(
            "pipeline",
            lambda d: d["postgres"]["ok"],
            "the dashboard to see PostgreSQL again",
            timeout=30,
        )

        # Kafka frozen (SIGSTOP): requests time out; thawed, the readings come back.
        stack.script("kafka-stop", "1")
        try:
            doc = board.wait_for(
                "pipeline",
                lambda d: not d["kafka"]["ok"],
                "the dashboard to report Kafka down",
                timeout=30,
            )
            assert doc["kafka"]["error"].startswith("Kafka")
            assert doc["postgres"]["ok"]
        finally:
            stack.script("kafka-cont", "1")
        board.wait_for(
            "pipeline", lambda d: d["kafka"]["ok"], "the dashboard to see Kafka again", timeout=60
        )
        # Nothing but JSON and the page leaves the server, even for a broken request.
        status, body = board.get("/api/nothing-here")
        assert status == 404
        assert body is None
