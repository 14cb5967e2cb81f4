"""``foodpipe dashboard`` without services: the documents it builds, its flags, its
vendored chart library, and the web app's behaviour with a fake reader."""

from __future__ import annotations

import argparse
import hashlib
import io
import re
import socket
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from sqlalchemy.exc import OperationalError
from starlette.testclient import TestClient

from foodpipe.audit import AuditReport
from foodpipe.cli import COMMANDS, build_parser
from foodpipe.commands.argtypes import host
from foodpipe.commands.dashboard import allowed_hosts, allowed_name
from foodpipe.commands.status import DatabaseState, Snapshot
from foodpipe.dashboard.app import INTERNAL_ERROR, STATIC, answered, create_app
from foodpipe.dashboard.collector import one_line
from foodpipe.dashboard.views import (
    REASON_CHARS,
    RebalanceTracker,
    audit_document,
    dead_letter_row,
    pipeline_document,
    written_per_s,
)
from foodpipe.log import configure_logging
from foodpipe.offsets import GroupState, Member, PartitionState, TopicState
from foodpipe.replay import DeadLetter
from tests.support import run_foodpipe, wait_until

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def member(tag: str) -> Member:
    return Member(
        member_id=f"foodpipe-consumer-{tag}0000-0000-0000-0000-000000000000",
        client_id="foodpipe-consumer",
        host="/127.0.0.1",
        partitions=(),
    )


def topic_state(owners: dict[int, str | None], lag: int = 0) -> TopicState:
    members = {
        tag: Member(
            member_id=member(tag).member_id,
            client_id="foodpipe-consumer",
            host="/127.0.0.1",
            partitions=tuple(("orders", p) for p, t in owners.items() if t == tag),
        )
        for tag in sorted({t for t in owners.values() if t is not None})
    }
    group = GroupState("group", "STABLE", tuple(members.values()))
    return TopicState(
        "orders",
        group,
        tuple(
            PartitionState(p, 0, 100, 100 - lag, members[t] if t else None)
            for p, t in owners.items()
        ),
    )


def snapshot(
    *, at: float = 0.0, rows: int | None = 10, topic: TopicState | None = None, **kw: Any
) -> Snapshot:
    return Snapshot(
        taken_at=T0 + timedelta(seconds=at),
        monotonic=1000.0 + at,
        topic=topic,
        dlq_topic="orders.dlq",
        dlq_messages=kw.pop("dlq_messages", 0),
        database=DatabaseState(rows=rows, error=kw.pop("db_error", None)),
        **kw,
    )


# ----------------------------------------------------------------------- documents


def test_written_per_s_is_row_growth_over_time() -> None:
    assert written_per_s(snapshot(at=2, rows=50), snapshot(at=0, rows=10)) == 20.0
    assert written_per_s(snapshot(at=2, rows=50), None) is None
    assert written_per_s(snapshot(at=2, rows=None), snapshot(at=0)) is None  # PostgreSQL down
    assert written_per_s(snapshot(at=2, rows=5), snapshot(at=0, rows=10)) == 0.0  # truncated


def test_rebalances_are_owner_changes_and_kafka_down_is_not_one() -> None:
    tracker = RebalanceTracker()
    one = topic_state({0: "aaaa", 1: "aaaa", 2: "aaaa"})
    two = topic_state({0: "aaaa", 1: "bbbb", 2: "bbbb"})
    tracker.observe(T0, one)  # the first reading is the baseline, not a rebalance
    tracker.observe(T0, one)
    assert tracker.count == 0
    tracker.observe(T0 + timedelta(seconds=1), None)  # Kafka did not answer
    assert tracker.count == 0
    tracker.observe(T0 + timedelta(seconds=2), two)
    tracker.observe(T0 + timedelta(seconds=3), topic_state({0: None, 1: None, 2: None}))
    document = tracker.to_dict()
    assert document["seen"] == 2
    assert document["latest"][0]["owners"] == {}  # newest first: everyone left
    assert document["latest"][1]["owners"]["1"] == "foodpipe-consumer@127.0.0.1#bbbb0000"
    assert len(document["latest"][1]["members"]) == 2


def test_pipeline_document_carries_status_owners_members_and_errors() -> None:
    topic = topic_state({0: "aaaa", 1: "bbbb", 2: None}, lag=5)
    doc = pipeline_document(
        snapshot(at=2, rows=30, topic=topic, dlq_messages=4),
        snapshot(at=0, rows=10, topic=topic),
        latency={"window_s": 60, "samples": 0, "p50_ms": None},
        dead_letters=None,
        dead_letters_error="Kafka: timed out",
        rebalances=RebalanceTracker(),
    )
    assert doc["status"]["lag"] == 15  # foodpipe status --json, unchanged
    assert doc["owners"] == {
        "0": "foodpipe-consumer@127.0.0.1#aaaa0000",
        "1": "foodpipe-consumer@127.0.0.1#bbbb0000",
        "2": None,
    }
    assert doc["members"] == [
        {"name": "foodpipe-consumer@127.0.0.1#aaaa0000", "partitions": [0]},
        {"name": "foodpipe-consumer@127.0.0.1#bbbb0000", "partitions": [1]},
    ]
    assert doc["written_per_s"] == 10.0
    assert doc["kafka"] == {"ok": True, "error": None}
    assert doc["dead_letters"] == {"latest": [], "error": "Kafka: timed out"}

    down = pipeline_document(
        snapshot(kafka_error="Kafka did not answer: timed out", db_error="PostgreSQL at x: no"),
        None,
        latency={"error": "PostgreSQL: no"},
        dead_letters=[],
        dead_letters_error=None,
        rebalances=RebalanceTracker(),
    )
    assert down["kafka"] == {"ok": False, "error": "Kafka did not answer: timed out"}
    assert down["postgres"] == {"ok": False, "error": "PostgreSQL at x: no"}
    assert down["owners"] == {}
    assert down["members"] == []


def test_a_dead_letter_row_is_short_and_says_where_it_came_from() -> None:
    letter = DeadLetter(
        partition=1,
        offset=7,
        key=None,
        value=b'{"order_id": "ORD-1"}',
        original_topic="orders",
        original_partition=2,
        original_offset=41,
        error_class="schema_invalid",
        reason="x" * 1000,
        failed_at="2026-12-01T12:00:00Z",
        group="g",
        truncated=False,
    )
    row = dead_letter_row(letter)
    assert row["origin"] == "orders[2]@41"
    assert row["position"] == "1:7"
    assert len(row["reason"]) == REASON_CHARS
    assert row["reason"].endswith("…")


def test_audit_document_has_the_verdict_and_every_check() -> None:
    report = AuditReport("orders", "orders.dlq", "group")
    doc = audit_document(report, error=None, started_at=T0, seconds=1.23)
    assert doc["verdict"] == "CONSISTENT"
    assert doc["seconds"] == 1.2
    assert {c["name"] for c in doc["checks"]} >= {"loss", "pending", "lag"}
    report.lost = ["ORD-1"]
    assert audit_document(report, error=None, started_at=T0, seconds=1)["verdict"] == (
        "INCONSISTENT"
    )
    failed = audit_document(None, error="Kafka: down", started_at=T0, seconds=0)
    assert failed["verdict"] is None
    assert failed["error"] == "Kafka: down"


def test_errors_reach_the_page_as_one_line_without_passwords() -> None:
    kafka = KafkaException(KafkaError(KafkaError._TRANSPORT, "broker down\nsecond line"))
    assert one_line(kafka, "Kafka") == "Kafka: broker down"
    database = OperationalError(
        "SELECT 1", {}, Exception("connection to postgresql://app:s3cret@db/x failed\nDETAIL")
    )
    text = one_line(database, "PostgreSQL")
    assert text == "PostgreSQL: connection to postgresql://app:***@db/x failed"


# ---------------------------------------------------------------------------- flags


def test_dashboard_is_a_command_with_validated_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert "dashboard" in COMMANDS
    args = build_parser().parse_args(["dashboard"])
    assert (args.host, args.port, args.interval) == ("127.0.0.1", 8050, 2.0)
    for bad in (
        ["--port", "0"],
        ["--port", "70000"],
        ["--host", "no such host"],
        ["--interval", "0"],
    ):
        with pytest.raises(SystemExit) as exited:
            build_parser().parse_args(["dashboard", *bad])
        assert exited.value.code == 2
    assert "--host" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("::1", "::1"),
        ("0.0.0.0", "0.0.0.0"),  # noqa: S104
        ("dash-1.local", "dash-1.local"),
    ],
)
def test_host_accepts_addresses_and_names(text: str, expected: str) -> None:
    assert host(text) == expected


@pytest.mark.parametrize("text", ["", "a b", "-lead.example", "x" * 254, "http://x"])
def test_host_refuses_what_cannot_be_listened_on(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        host(text)


def test_only_loopback_names_and_the_allowed_ones_are_answered() -> None:
    loopback = ["127.0.0.1", "[::1]", "localhost"]
    assert allowed_hosts("127.0.0.1") == loopback
    assert "dash.local" in allowed_hosts("dash.local")
    # Listening everywhere (a container whose port Compose publishes on 127.0.0.1) says
    # nothing about the names the page is opened by: still the loopback names only.
    assert allowed_hosts("0.0.0.0") == loopback  # noqa: S104
    assert allowed_hosts("::") == loopback
    everywhere = "0.0.0.0"  # noqa: S104
    with_name = allowed_hosts(everywhere, ["dash.example"])
    assert with_name == ["127.0.0.1", "[::1]", "dash.example", "localhost"]
    assert allowed_hosts("0.0.0.0", ["*"]) == ["*"]  # noqa: S104


def test_allow_host_takes_names_addresses_and_the_wildcard_only() -> None:
    assert allowed_name("*") == "*"
    assert allowed_name("dash.example") == "dash.example"
    with pytest.raises(argparse.ArgumentTypeError):
        allowed_name("*.example")


def test_a_rebinding_page_cannot_read_a_dashboard_that_listens_everywhere() -> None:
    app = create_app(
        FakeReadings(),
        interval_s=0.05,
        business_interval_s=0.05,
        allowed_hosts=allowed_hosts("0.0.0.0"),  # noqa: S104
    )
    with TestClient(app, base_url="http://127.0.0.1:8050", raise_server_exceptions=False) as c:
        assert c.get("/api/pipeline", headers={"host": "rebound.example:8050"}).status_code == 400
        assert c.get("/favicon.ico", headers={"host": "localhost:8050"}).status_code == 204
        assert c.get("/favicon.ico", headers={"host": "127.0.0.1:8050"}).status_code == 204


# ------------------------------------------------------------------- static files


def test_the_vendored_chart_library_is_the_recorded_one_with_its_licence() -> None:
    folder = STATIC / "vendor" / "uplot"
    sums = (folder / "SHA256SUMS").read_text().split("\n")
    recorded = dict(reversed(line.split()) for line in sums if line.strip())
    assert set(recorded) == {"uPlot.iife.min.js", "uPlot.min.css", "LICENSE"}
    for name, digest in recorded.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    assert "MIT License" in (folder / "LICENSE").read_text()
    readme = (STATIC / "vendor" / "README.md").read_text()
    assert "1.6.32" in readme
    assert "npm pack" in readme


def test_the_page_loads_nothing_from_another_origin() -> None:
    page = (STATIC / "index.html").read_text()
    sources = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert sources
    assert all(s.startswith("/static/") for s in sources), sources
    for name in ("dashboard.js", "dashboard.css"):
        assert "http" not in (STATIC / name).read_text(), name
    assert "innerHTML" not in (STATIC / "dashboard.js").read_text(), "data goes in as text"


def test_the_static_files_ship_with_the_package() -> None:
    # Dockerfile copies src/ and installs it; pyproject's package-data covers a wheel.
    assert STATIC.is_relative_to(Path(__file__).resolve().parents[2] / "src" / "foodpipe")
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '"dashboard/static/vendor/*/*"' in pyproject


# ------------------------------------------------------------------------- the app


@pytest.fixture(autouse=True)
def _logs_to_a_live_stream() -> None:
    # An earlier test may have pointed the logging setup at a stream that is closed now.
    configure_logging("INFO", "json", stream=io.StringIO())


class FakeReadings:
    def __init__(self) -> None:
        self.fail = False
        self.audit_may_finish = threading.Event()
        self.audits = 0

    def pipeline(self) -> dict[str, Any]:
        if self.fail:
            raise RuntimeError("secret internals at 0xdeadbeef")
        return {"kafka": {"ok": True, "error": None}}

    def business(self) -> dict[str, Any]:
        return {"error": None, "orders": 3}

    def run_audit(self) -> dict[str, Any] | None:
        self.audits += 1
        self.audit_may_finish.wait(10)  # released by the test; bounded so it cannot hang
        return {"running": False, "verdict": "CONSISTENT", "checks": [], "error": None}


def client_for(readings: FakeReadings) -> TestClient:
    app = create_app(readings, interval_s=0.05, business_interval_s=0.05)
    return TestClient(app, base_url="http://127.0.0.1:8050", raise_server_exceptions=False)


def test_the_app_serves_the_page_with_a_strict_policy_and_the_latest_documents() -> None:
    with client_for(FakeReadings()) as client:
        page = client.get("/")
        assert page.status_code == 200
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
        assert client.get("/static/vendor/uplot/uPlot.iife.min.js").status_code == 200
        wait_until(lambda: client.get("/api/business").status_code == 200, timeout=10)
        assert client.get("/api/business").json() == {"error": None, "orders": 3}
        assert client.get("/api/audit").status_code == 503  # never run: nothing to show
        assert client.get("/favicon.ico").status_code == 204
        missing = client.get("/api/nothing")
        assert missing.status_code == 404
        assert "Traceback" not in missing.text


def test_a_failing_reading_reaches_the_page_as_one_line_only() -> None:
    readings = FakeReadings()
    readings.fail = True
    with client_for(readings) as client:
        wait_until(lambda: client.get("/api/pipeline").status_code == 200, timeout=10)
        body = client.get("/api/pipeline").text
        assert INTERNAL_ERROR in body
        assert "deadbeef" not in body
        assert "Traceback" not in body


def test_the_audit_needs_its_header_and_runs_one_at_a_time() -> None:
    readings = FakeReadings()
    with client_for(readings) as client:
        assert client.post("/api/audit").status_code == 403
        assert client.post("/api/audit", headers={"X-Foodpipe": "audit"}).status_code == 202
        assert client.get("/api/audit").json()["running"] is True
        assert client.post("/api/audit", headers={"X-Foodpipe": "audit"}).status_code == 409
        readings.audit_may_finish.set()
        wait_until(lambda: client.get("/api/audit").json()["running"] is False, timeout=10)
        assert client.get("/api/audit").json()["verdict"] == "CONSISTENT"
        assert readings.audits == 1


def test_a_foreign_host_name_is_refused() -> None:
    with client_for(FakeReadings()) as client:
        response = client.get("/api/pipeline", headers={"host": "evil.example"})
        assert response.status_code == 400


def test_only_readings_every_service_answered_stretch_the_interval() -> None:
    assert answered({"error": None, "orders": 3})
    assert answered({"kafka": {"ok": True, "error": None}, "latency": {"p50_ms": 3}})
    assert not answered({"kafka": {"ok": False, "error": "Kafka did not answer"}})
    assert not answered({"latency": {"error": "PostgreSQL: down"}})
    assert not answered({"error": "PostgreSQL: down"})


def test_a_taken_port_is_exit_2_with_one_line() -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",  # never reached: it stops at the bind
        "DATABASE_URL": "postgresql://app:not-a-placeholder@127.0.0.1:1/orders",
    }
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # --timeout: the first reading starts before the bind, and exit waits for it.
        result = run_foodpipe(
            ["dashboard", "--port", str(port), "--timeout", "0.5"], env, timeout=60
        )
    assert result.returncode == 2, result.stderr
    assert f"foodpipe: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
