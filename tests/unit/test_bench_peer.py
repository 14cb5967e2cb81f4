"""The JDBC-sink peer row of ``foodpipe bench``: its record form and how it is reported."""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from pathlib import Path

import jsonschema

from foodpipe.bench.data import make_dataset
from foodpipe.bench.metrics import METRICS, OPTIONAL, TARGETS
from foodpipe.bench.peer import PeerTools, envelope, peer_conditions
from foodpipe.bench.report import render_markdown
from foodpipe.bench.schema import RESULT_SCHEMA

from .test_bench import CONDITIONS, document, record


def _decimal(encoded: str, scale: int) -> Decimal:
    unscaled = int.from_bytes(base64.b64decode(encoded), "big", signed=True)
    return Decimal(unscaled).scaleb(-scale)


def test_an_order_is_wrapped_with_its_schema_and_nothing_changes_on_the_way() -> None:
    for value in make_dataset(50, seed=3).sample_values:
        order = json.loads(value)
        wrapped = json.loads(envelope(value))
        fields = {f["field"]: f for f in wrapped["schema"]["fields"]}
        payload = wrapped["payload"]
        # One field per column the consumer writes, all required.
        assert list(fields) == list(payload) == [
            "order_id", "customer_id", "items", "total_amount", "status", "created_at"
        ]  # fmt: skip
        assert not any(f["optional"] for f in fields.values())
        amount = fields["total_amount"]
        assert amount["name"] == "org.apache.kafka.connect.data.Decimal"
        assert _decimal(payload["total_amount"], int(amount["parameters"]["scale"])) == Decimal(
            order["total_amount"]
        )
        assert fields["items"]["name"] == "io.debezium.data.Json"
        assert json.loads(payload["items"]) == order["items"]
        assert fields["created_at"]["name"] == "io.debezium.time.ZonedTimestamp"
        for key in ("order_id", "customer_id", "status", "created_at"):
            assert payload[key] == order[key]


def test_a_bench_without_the_peer_says_why_in_one_line_and_is_otherwise_complete() -> None:
    values = {name: 1.0 for name in METRICS if name not in OPTIONAL}
    doc = document(record(1, **values))
    doc["conditions"] = {**CONDITIONS, "peer": peer_conditions(None, "could not be had: no jars")}
    jsonschema.validate(doc, RESULT_SCHEMA)
    assert not OPTIONAL & set(doc["metrics"])
    assert not OPTIONAL & set(doc["ratios"])
    for target in doc["targets"]:
        assert (target["value"] is None) == (target["metric"] in OPTIONAL), target
    markdown = render_markdown(doc)
    peer_lines = [line for line in markdown.splitlines() if "JDBC-sink peer" in line]
    assert peer_lines == ["JDBC-sink peer: not measured, could not be had: no jars."] + [
        f"| {t['description']} | n/a | median | not measured |"
        for t in doc["targets"]
        if t["metric"] in OPTIONAL
    ]


def test_the_peer_row_names_what_ran_and_its_ratio_is_taken_within_the_run(
    tmp_path: Path,
) -> None:
    libs, plugin = tmp_path / "libs", tmp_path / "plugins" / "debezium-connector-jdbc"
    libs.mkdir()
    plugin.mkdir(parents=True)
    (libs / "connect-runtime-4.3.1.jar").touch()
    (plugin / "debezium-connector-jdbc-3.6.0.Final.jar").touch()
    tools = PeerTools("java", libs, plugin.parent, tmp_path / "log4j2.properties")
    values = dict.fromkeys(METRICS, 1.0)
    runs = [
        record(1, **{**values, "drain_1_steady": 30_000.0, "peer_jdbc_steady": 20_000.0}),
        record(2, **{**values, "drain_1_steady": 10_000.0, "peer_jdbc_steady": 10_000.0}),
    ]
    doc = document(*runs)
    doc["conditions"] = {**CONDITIONS, "peer": peer_conditions(tools, "measured")}
    jsonschema.validate(doc, RESULT_SCHEMA)
    ratio = doc["ratios"]["drain_1_steady_vs_peer_jdbc_steady"]
    assert ratio["runs"] == [1.5, 1.0]
    assert ratio["label"] == "drain, 1 consumer vs the JDBC-sink peer, first row → last row"
    markdown = render_markdown(doc)
    assert (
        "JDBC-sink peer: Kafka Connect 4.3.1 standalone with the Debezium JDBC sink 3.6.0.Final"
        " (tasks.max=1, insert.mode=upsert, primary.key.mode=record_value,"
        " primary.key.fields=order_id, batch.size=500,"
        " dialect.postgres.unnest.insert.enabled=true)"
    ) in markdown
    assert "| drain with 1 consumer >= 1.0 x the JDBC-sink peer, first row → last row" in markdown


def test_the_peers_jvm_is_not_held_to_the_python_services_memory_limit() -> None:
    assert "peer_jdbc_rss" in METRICS
    assert not [t for t in TARGETS if t.metric == "peer_jdbc_rss"]
