"""``foodpipe status`` against real services: lag 0 after a drain, and the right owner
for every partition when two consumers share the group."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient

from tests.conftest import Pipeline
from tests.poison import POISON, produce_records, record, valid_order
from tests.support import (
    group_lag,
    run_foodpipe,
    spawn_foodpipe,
    stop_process,
    wait_until,
)


def status(pipe: Pipeline, *args: str) -> tuple[int, dict[str, Any]]:
    result = run_foodpipe(["status", "--json", *args], pipe.env, timeout=60)
    assert result.stdout, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return result.returncode, document


def test_status_json_reports_lag_0_rows_and_dlq_after_a_drain(
    pipeline: Pipeline, log_dir: Path
) -> None:
    orders = [valid_order(n) for n in range(1, 301)]
    poison = [c for c in POISON if c.error_class in ("json_invalid", "business_rule")]
    records: list[tuple[bytes | None, bytes | None]] = [record(o) for o in orders]
    records += [(c.key, c.value) for c in poison]
    produce_records(pipeline.bootstrap, pipeline.topic, records)

    # Before any consumer: everything is lag, nobody owns anything.
    code, before = status(pipeline)
    assert code == 0
    assert before["lag"] == len(records)
    assert before["group"]["members"] == []
    assert all(p["owner"] is None and p["committed"] is None for p in before["topic"]["partitions"])

    consumer = spawn_foodpipe(["consume"], pipeline.env, log_dir / "consumer.log")
    try:
        wait_until(lambda: pipeline.row_count() == len(orders), timeout=90, message="300 rows")
        wait_until(
            lambda: group_lag(pipeline.bootstrap, pipeline.group, pipeline.topic) == 0,
            timeout=60,
            message="lag 0",
        )
        code, after = status(pipeline)
    finally:
        assert stop_process(consumer) == 0
    assert code == 0
    assert after["lag"] == 0
    partitions = after["topic"]["partitions"]
    assert [p["partition"] for p in partitions] == [0, 1, 2]
    assert sum(p["log_end"] for p in partitions) == len(records)
    for p in partitions:
        assert p["committed"] == p["log_end"]
        assert p["lag"] == 0
        assert p["owner"] is not None  # the consumer was still running when we looked
    assert after["database"]["rows"] == len(orders)
    assert after["database"]["processed_last_60s"] == len(orders)
    assert after["database"]["error"] is None
    assert after["dlq"]["messages"] == len(poison)
    assert after["group"]["state"] == "STABLE"
    assert len(after["group"]["members"]) == 1

    # The table, for a human, says the same.
    table = run_foodpipe(["status"], {**pipeline.env, "COLUMNS": "160"}, timeout=60)
    assert table.returncode == 0, table.stderr
    assert f"topic {pipeline.topic}" in table.stdout
    assert "rows in orders" in table.stdout
    assert f"{len(poison)} messages in {pipeline.dlq_topic}" in table.stdout


def owned_by_log(log: Path, topic: str) -> list[int]:
    """The partitions a consumer says it owns in its last rebalance log line."""
    owned: list[str] = []
    for line in log.read_text().splitlines() if log.exists() else []:
        if line.startswith("{") and '"owned"' in line:
            owned = json.loads(line)["owned"]
    prefix = f"{topic}["
    return sorted(int(name[len(prefix) : -1]) for name in owned if name.startswith(prefix))


def test_status_names_the_owner_of_each_partition_with_two_consumers(
    make_pipeline: Callable[..., Pipeline], log_dir: Path
) -> None:
    pipe = make_pipeline()
    produce_records(pipe.bootstrap, pipe.topic, [record(valid_order(n)) for n in range(1, 61)])
    logs = [log_dir / "consumer-a.log", log_dir / "consumer-b.log"]
    consumers: list[subprocess.Popen[bytes]] = []
    try:
        consumers.append(spawn_foodpipe(["consume"], pipe.env, logs[0]))
        wait_until(lambda: pipe.row_count() == 60, timeout=90, message="60 rows")
        consumers.append(spawn_foodpipe(["consume"], pipe.env, logs[1]))

        def settled() -> dict[str, Any] | None:
            _code, doc = status(pipe)
            members = doc["group"]["members"]
            by_log = sorted(owned_by_log(log, pipe.topic) for log in logs)
            by_status = sorted(m["partitions"] for m in members)
            if doc["group"]["state"] != "STABLE" or len(members) != 2:
                return None
            return doc if by_log == by_status and all(by_status) else None

        doc = wait_until(
            settled,
            timeout=90,
            interval=0.5,
            message="two members, each owning what its own log says it owns",
        )
    finally:
        for proc in consumers:
            assert stop_process(proc) == 0
    members = {m["member_id"]: set(m["partitions"]) for m in doc["group"]["members"]}
    assert len(members) == 2
    # Every partition has exactly one owner, and the partition rows agree with members.
    owners = {p["partition"]: p["owner"]["member_id"] for p in doc["topic"]["partitions"]}
    assert sorted(owners) == [0, 1, 2]
    for partition, member in owners.items():
        assert partition in members[member]
    assert sorted(p for parts in members.values() for p in parts) == [0, 1, 2]
    assert doc["lag"] == 0


def test_status_watch_json_prints_one_document_per_refresh(
    pipeline: Pipeline, log_dir: Path
) -> None:
    log = log_dir / "status.log"
    proc = spawn_foodpipe(["status", "--watch", "--json", "--interval", "0.2"], pipeline.env, log)
    try:

        def documents() -> list[dict[str, Any]]:
            lines = [line for line in log.read_text().splitlines() if line.startswith('{"da')]
            return [json.loads(line) for line in lines]

        docs = wait_until(lambda: len(documents()) >= 3 and documents(), timeout=30)
    finally:
        stop_process(proc)
    assert all(d["topic"]["name"] == pipeline.topic for d in docs)
    # From the second refresh on, the rates of the offsets are there too.
    assert "rates" not in docs[0]
    assert docs[1]["rates"] == {"consumed_per_s": 0.0, "produced_per_s": 0.0}


def test_status_with_a_missing_topic_is_one_line(pipeline: Pipeline) -> None:
    missing = f"{pipeline.topic}-typo"
    env = {**pipeline.env, "KAFKA_TOPIC": missing}
    code, doc = status_env(env)
    assert code == 1
    assert f"{missing} does not exist" in doc["kafka_error"]
    # Looking must not create it (a broker may auto-create topics asked for by name).
    assert (
        missing
        not in AdminClient({"bootstrap.servers": pipeline.bootstrap}).list_topics(timeout=10).topics
    )


def status_env(env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    result = run_foodpipe(["status", "--json"], env, timeout=60)
    document: dict[str, Any] = json.loads(result.stdout)
    return result.returncode, document
