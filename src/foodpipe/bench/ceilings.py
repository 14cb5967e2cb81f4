"""The ceilings: what PostgreSQL and Kafka can do on their own, on this machine, now.

Database ceilings write the same prepared rows into the same ``orders`` table (a fresh
one each time), as the application role:

- **DB-COPY**: one ``COPY ... FROM STDIN`` of every row, one commit. The physical
  ingest limit of the table with its indexes.
- **DB-BATCH**: ``execute_values`` pages of ``page_size`` rows, one multi-row
  ``INSERT ... ON CONFLICT (order_id) DO NOTHING`` statement per page (``page_size``
  equals the page length, so psycopg2 sends exactly one statement), one commit per page.
  What a well-batched consumer can reach.
- **DB-NAIVE**: one ``INSERT`` and one ``COMMIT`` per row: the per-message design the
  pipeline must beat by an order of magnitude. Every commit waits for a WAL flush.

Kafka ceilings:

- **KAFKA-PRODUCE**: Kafka's own ``org.apache.kafka.tools.ProducerPerformance``, fed real
  serialised orders (``--payload-file``) with the producer settings foodpipe uses
  (``acks=all``, idempotence, linger, compression, batch size).
- **KAFKA-CONSUME**: a bare confluent-kafka loop that drains a topic with foodpipe's
  consumer settings and does nothing with the messages.
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer
from psycopg2.extras import execute_values
from sqlalchemy.engine import URL

from foodpipe.bench.data import COLUMNS, Dataset
from foodpipe.bench.scratch import connect
from foodpipe.kafka import consumer_config, java_security_properties
from foodpipe.settings import Settings

_INSERT = (
    f"INSERT INTO orders ({', '.join(COLUMNS)}) VALUES %s"  # noqa: S608 - constants only
    " ON CONFLICT (order_id) DO NOTHING"
)
# The consumer's own template: items travel as JSON text, cast once by the server.
_TEMPLATE = "(" + ", ".join("%s::jsonb" if c == "items" else "%s" for c in COLUMNS) + ")"
_INSERT_ONE = _INSERT.replace("VALUES %s", f"VALUES {_TEMPLATE}")


def _count(conn: Any) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM orders")
        return int(cur.fetchone()[0])


def db_copy(url: URL, data: Dataset) -> float:
    """Rows/s of one ``COPY`` of every row, including its commit."""
    buffer = data.copy_buffer()
    with closing(connect(url)) as conn:
        started = time.perf_counter()
        with conn.cursor() as cur:
            cur.copy_expert(f"COPY orders ({', '.join(COLUMNS)}) FROM STDIN", buffer)
        conn.commit()
        elapsed = time.perf_counter() - started
        _check_count(conn, len(data.rows), "DB-COPY")
    return len(data.rows) / elapsed


def db_batch(url: URL, data: Dataset, page_size: int) -> float:
    """Rows/s of multi-row inserts, ``page_size`` rows per statement and per commit."""
    rows = data.rows
    with closing(connect(url)) as conn:
        started = time.perf_counter()
        with conn.cursor() as cur:
            for start in range(0, len(rows), page_size):
                page = rows[start : start + page_size]
                execute_values(cur, _INSERT, page, template=_TEMPLATE, page_size=len(page))
                conn.commit()
        elapsed = time.perf_counter() - started
        _check_count(conn, len(rows), "DB-BATCH")
    return len(rows) / elapsed


def db_naive(url: URL, data: Dataset, count: int) -> float:
    """Rows/s of one ``INSERT`` + ``COMMIT`` per row, over the first ``count`` rows."""
    rows = data.rows[:count]
    with closing(connect(url)) as conn:
        started = time.perf_counter()
        with conn.cursor() as cur:
            for row in rows:
                cur.execute(_INSERT_ONE, row)
                conn.commit()
        elapsed = time.perf_counter() - started
        _check_count(conn, len(rows), "DB-NAIVE")
    return len(rows) / elapsed


def _check_count(conn: Any, expected: int, what: str) -> None:
    found = _count(conn)
    if found != expected:
        raise RuntimeError(f"{what} wrote {found} rows, expected {expected}")


# ----------------------------------------------------------------------------- Kafka


@dataclass(frozen=True)
class KafkaTools:
    """Kafka's jars (the local stack's cache) and a Java to run its tools with."""

    libs: Path
    log4j_config: Path
    java: str = "java"

    @property
    def version(self) -> str:
        for jar in sorted(self.libs.glob("kafka-clients-*.jar")):
            return jar.name.removeprefix("kafka-clients-").removesuffix(".jar")
        return "unknown"

    def java_version(self) -> str:
        result = subprocess.run(
            [self.java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
        first = (result.stderr or result.stdout).strip().splitlines()
        match = re.search(r'version "([^"]+)"', first[0]) if first else None
        return match.group(1) if match else "unknown"


#: Producer settings shared by foodpipe's librdkafka config and the Java client, under
#: the same names and with the same meaning.
JAVA_PRODUCER_KEYS = ("acks", "enable.idempotence", "linger.ms", "compression.type", "batch.size")

_PERF_LINE = re.compile(
    r"(?P<records>\d+) records sent, (?P<rate>[\d.]+) records/sec \((?P<mb>[\d.]+) MB/sec\),"
    r" (?P<avg>[\d.]+) ms avg latency, (?P<max>[\d.]+) ms max latency"
)


@dataclass(frozen=True)
class PerfResult:
    records: int
    rate: float
    mb_per_s: float
    avg_latency_ms: float


def kafka_produce(
    tools: KafkaTools,
    bootstrap: str,
    topic: str,
    records: int,
    payload_file: Path,
    producer_props: Mapping[str, Any],
    log_dir: Path,
) -> PerfResult:
    """Run ``ProducerPerformance`` unthrottled; parse its final summary line."""
    props = [
        f"{key}={str(producer_props[key]).lower()}"
        for key in JAVA_PRODUCER_KEYS
        if key in producer_props
    ]
    security_file = log_dir / "producer-security.properties"
    security_file.touch(mode=0o600)
    security_file.write_text(
        "".join(
            f"{key}={_java_escape(value)}\n"
            for key, value in java_security_properties(producer_props).items()
        )
    )
    argv = [
        tools.java,
        "-Xmx512m",
        "-XX:+UseSerialGC",
        f"-Dlog4j2.configurationFile={tools.log4j_config}",
        f"-Dkafka.logs.dir={log_dir}",
        "-cp",
        f"{tools.libs}/*",
        "org.apache.kafka.tools.ProducerPerformance",
        "--bootstrap-server",
        bootstrap,
        "--topic",
        topic,
        "--num-records",
        str(records),
        "--throughput",
        "-1",
        "--payload-file",
        str(payload_file),
        "--command-property",
        *props,
        "client.id=foodpipe-bench",
        # The security settings (a SASL password, a key) in a file only this user reads.
        "--command-config",
        str(security_file),
    ]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    finally:
        security_file.unlink(missing_ok=True)
    summary = parse_perf_summary(result.stdout)
    if result.returncode != 0 or summary is None:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"ProducerPerformance failed (exit {result.returncode}): {tail}")
    return summary


def _java_escape(value: str) -> str:
    """A value for a Java ``.properties`` file: backslashes and line breaks escaped."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def parse_perf_summary(output: str) -> PerfResult | None:
    """The final summary line of ``ProducerPerformance`` (it follows the progress lines)."""
    matches = list(_PERF_LINE.finditer(output))
    if not matches:
        return None
    last = matches[-1]
    return PerfResult(
        int(last["records"]), float(last["rate"]), float(last["mb"]), float(last["avg"])
    )


def kafka_consume(settings: Settings, topic: str, expected: int, timeout_s: float = 300) -> float:
    """Msg/s of a bare drain of ``expected`` messages, first message to last.

    The clock starts at the first message, so the group join is not counted: this is
    the rate the client can deliver messages at, nothing else.
    """
    consumer = Consumer(
        consumer_config(
            settings,
            **{"group.id": f"fpbench-bare-{uuid.uuid4().hex[:8]}", "client.id": "foodpipe-bench"},
        )
    )
    received = first_batch = 0
    first = last = 0.0
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout_s
        while received < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"bare drain read {received} of {expected} in {timeout_s}s")
            messages = consumer.consume(num_messages=1000, timeout=1.0)
            good = sum(1 for m in messages if m.error() is None)
            if not good:
                continue
            if received == 0:
                # The first batch arrived before the clock started: it is not counted.
                first, first_batch = time.perf_counter(), good
            received += good
            last = time.perf_counter()
    finally:
        consumer.close()
    if last <= first:
        raise RuntimeError(f"bare drain of {expected} messages came in one batch: too few to time")
    return (received - first_batch) / (last - first)
