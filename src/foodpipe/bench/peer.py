"""The peer an engineer would pick instead of foodpipe: Kafka Connect and a JDBC sink.

Kafka Connect standalone, from the same Kafka jars as the stack's broker (Connect's
runtime is among them), with the Debezium JDBC sink connector from its plugin archive;
``scripts/local_stack.sh connect-plugin`` resolves both through Maven into the stack's
cache. The sink runs as the issue that asked for it measured it: one task,
``insert.mode=upsert`` keyed on the record value's ``order_id``, ``batch.size=500`` and
``dialect.postgres.unnest.insert.enabled=true``.

It drains **the same orders** as foodpipe's drain: :func:`republish` copies the
pre-loaded topic, message by message (same key, same partition), into a topic of its
own in the form the connector needs, JSON with the schema in every message (the amount
as a Connect ``Decimal``, the items as ``io.debezium.data.Json`` text, the timestamp as
``io.debezium.time.ZonedTimestamp``). That copy runs before the clock starts.
:func:`drain` then times the JVM from its start to the last row in a fresh ``orders``
table of the same shape (its own database), and from the first row to the last the
same way as foodpipe's steady rate (``processed_at`` is each batch's transaction start).
The end is "every row is in the table": the sink's Kafka offsets are committed later,
on Connect's own flush timer, which a backlog-drain reading would not wait for either.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from confluent_kafka import Consumer, Producer
from sqlalchemy.engine import URL

from foodpipe.bench.pipeline import (
    PROGRESS_INTERVAL_S,
    DrainResult,
    KafkaProbe,
    _count_rows,
    _row_stats,
)
from foodpipe.bench.procs import ChildProcess
from foodpipe.bench.scratch import connect
from foodpipe.kafka import consumer_config, java_security_properties, producer_config
from foodpipe.settings import Settings

#: The connector class inside the plugin archive.
CONNECTOR_CLASS = "io.debezium.connector.jdbc.JdbcSinkConnector"
#: How long the JVM may take from start to its first row before the peer is given up.
START_TIMEOUT_S = 180.0


class PeerUnavailable(Exception):
    """The peer cannot run on this machine; ``str()`` is one line saying why."""


@dataclass(frozen=True)
class PeerTools:
    """A Java, Kafka's jars (Connect's runtime among them) and the sink's plugin folder."""

    java: str
    libs: Path
    plugin_path: Path
    log4j_config: Path

    @property
    def connector_version(self) -> str:
        for jar in sorted(self.plugin_path.glob("*/debezium-connector-jdbc-*.jar")):
            return jar.name.removeprefix("debezium-connector-jdbc-").removesuffix(".jar")
        return "unknown"


def peer_conditions(tools: PeerTools | None, note: str) -> dict[str, Any]:
    """What the report says of the peer: its versions and settings, or why it is absent."""
    if tools is None or note != "measured":
        return {"status": note}
    return {
        "status": note,
        "kafka_connect": next(
            (
                jar.name.removeprefix("connect-runtime-").removesuffix(".jar")
                for jar in tools.libs.glob("connect-runtime-*.jar")
            ),
            "unknown",
        ),
        "debezium_connector_jdbc": tools.connector_version,
        "settings": {
            key: connector_properties("peer", "topic", URL.create("postgresql"))[key]
            for key in (
                "tasks.max",
                "insert.mode",
                "primary.key.mode",
                "primary.key.fields",
                "batch.size",
                "dialect.postgres.unnest.insert.enabled",
            )
        },
    }


# -------------------------------------------------------------------- the record form


def _field(name: str, schema_type: str, logical: str | None = None, **extra: Any) -> Any:
    field: dict[str, Any] = {"field": name, "type": schema_type, "optional": False}
    if logical is not None:
        field["name"] = logical
        field["version"] = 1
    return {**field, **extra}


#: The Connect schema of an order, one field per column of ``orders`` but
#: ``processed_at`` (the table's default, as for foodpipe's own insert).
VALUE_SCHEMA: dict[str, Any] = {
    "type": "struct",
    "name": "foodpipe.Order",
    "optional": False,
    "fields": [
        _field("order_id", "string"),
        _field("customer_id", "string"),
        _field("items", "string", "io.debezium.data.Json"),
        _field(
            "total_amount",
            "bytes",
            "org.apache.kafka.connect.data.Decimal",
            parameters={"scale": "2"},
        ),
        _field("status", "string"),
        _field("created_at", "string", "io.debezium.time.ZonedTimestamp"),
    ],
}
_ENVELOPE_HEAD = b'{"schema":' + json.dumps(VALUE_SCHEMA, separators=(",", ":")).encode()


def _decimal_bytes(amount: str, scale: int = 2) -> str:
    """A Connect ``Decimal``: the unscaled value, big-endian two's complement, base64."""
    unscaled = int(Decimal(amount).scaleb(scale).to_integral_exact())
    length = max(1, (unscaled.bit_length() + 8) // 8)
    return base64.b64encode(unscaled.to_bytes(length, "big", signed=True)).decode("ascii")


def envelope(value: bytes) -> bytes:
    """One serialised order as the JsonConverter's ``{"schema": ..., "payload": ...}``."""
    return _wrap(json.loads(value))


def _wrap(order: dict[str, Any]) -> bytes:
    payload = {
        "order_id": order["order_id"],
        "customer_id": order["customer_id"],
        "items": json.dumps(order["items"], separators=(",", ":")),
        "total_amount": _decimal_bytes(order["total_amount"]),
        "status": order["status"],
        "created_at": order["created_at"],
    }
    return _ENVELOPE_HEAD + b',"payload":' + json.dumps(payload).encode() + b"}"


@dataclass(frozen=True)
class Copied:
    seconds: float
    #: The ``order_id`` of each partition's last message: the sink writes a partition in
    #: order, so once these rows are in the table, every row is.
    last_ids: list[str]


def republish(
    settings: Settings, probe: KafkaProbe, source: str, target: str, expected: int
) -> Copied:
    """Copy ``source`` into ``target`` in the connector's form, same keys and partitions."""
    started = time.monotonic()
    last: dict[int, str] = {}
    group = f"fpbench-peer-copy-{uuid.uuid4().hex[:8]}"
    consumer = Consumer(consumer_config(settings, **{"group.id": group}))
    producer = Producer(producer_config(settings))
    copied = 0
    deadline = started + 120 + expected / 1000
    try:
        consumer.subscribe([source])
        while copied < expected:
            if time.monotonic() > deadline:
                raise PeerUnavailable(f"copying {source} for the peer stalled at {copied}")
            for message in consumer.consume(num_messages=1000, timeout=1.0):
                value, partition = message.value(), message.partition()
                if message.error() is not None or value is None or partition is None:
                    continue  # an end-of-partition event, or a tombstone the pre-load never writes
                order = json.loads(value)
                last[partition] = order["order_id"]  # a partition comes in offset order
                record = _wrap(order)
                while True:
                    try:
                        producer.produce(target, record, message.key(), partition=partition)
                        break
                    except BufferError:  # the local queue is full: let it drain
                        producer.poll(0.1)
                copied += 1
            producer.poll(0)
        if producer.flush(60) != 0:
            raise PeerUnavailable(f"copying {source} for the peer: messages left unsent")
    finally:
        consumer.close()
    on_topic = probe.end_total(target)
    if on_topic != expected:
        raise PeerUnavailable(f"the peer's topic holds {on_topic} orders, expected {expected}")
    return Copied(time.monotonic() - started, list(last.values()))


# ------------------------------------------------------------------------------ drain


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _properties(path: Path, values: dict[str, str]) -> Path:
    """A Java ``.properties`` file only this user reads (it may hold passwords)."""
    path.touch(mode=0o600)
    escaped = (v.replace("\\", "\\\\").replace("\n", "\\n") for v in values.values())
    path.write_text("".join(f"{k}={v}\n" for k, v in zip(values, escaped, strict=True)))
    return path


def worker_properties(
    settings: Settings, tools: PeerTools, port: int, work_dir: Path
) -> dict[str, str]:
    security = java_security_properties(consumer_config(settings))
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "key.converter": "org.apache.kafka.connect.storage.StringConverter",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter.schemas.enable": "true",
        "offset.storage.file.filename": str(work_dir / "connect.offsets"),
        "offset.flush.interval.ms": "1000",
        "plugin.path": str(tools.plugin_path),
        # Connect's default (hybrid_warn) also scans every jar by reflection: 40 s here,
        # after which Connect itself warns that every plugin has ServiceLoader manifests
        # and advises service_load, as an engineer deploying it would set.
        "plugin.discovery": "service_load",
        "listeners": f"http://127.0.0.1:{port}",
        **security,
        **{f"consumer.{key}": value for key, value in security.items()},
    }


def jdbc_address(url: URL) -> str:
    """The JDBC form of ``url``, with its sslmode and sslrootcert (pgjdbc reads both as
    libpq does). Client certificates are not passed: pgjdbc wants the key as PKCS-8
    DER, not the PEM that libpq takes; a server that requires them refuses the peer."""
    address = f"jdbc:postgresql://{url.host}:{url.port or 5432}/{url.database}"
    tls = {key: url.query[key] for key in ("sslmode", "sslrootcert") if key in url.query}
    if tls:
        address += "?" + urlencode(tls)
    return address


def connector_properties(name: str, topic: str, jdbc_url: URL) -> dict[str, str]:
    return {
        "name": name,
        "connector.class": CONNECTOR_CLASS,
        "tasks.max": "1",
        "topics": topic,
        "connection.url": jdbc_address(jdbc_url),
        "connection.username": str(jdbc_url.username),
        "connection.password": str(jdbc_url.password),
        "insert.mode": "upsert",
        "primary.key.mode": "record_value",
        "primary.key.fields": "order_id",
        "batch.size": "500",
        "dialect.postgres.unnest.insert.enabled": "true",
        "schema.evolution": "none",
        "collection.name.format": "orders",
        "use.time.zone": "UTC",
    }


def _task_failure(port: int, name: str) -> str | None:
    """The first line of the connector's or its task's trace, if either has FAILED."""
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/connectors/{name}/status", timeout=5
        ) as response:
            status = json.load(response)
    except (OSError, urllib.error.URLError, ValueError):
        return None  # the REST listener is not up yet: nothing to say
    for part in [status.get("connector", {}), *status.get("tasks", [])]:
        if part.get("state") == "FAILED":
            return str(part.get("trace", "FAILED")).strip().splitlines()[0]
    return None


def _present(conn: Any, order_ids: list[str]) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM orders WHERE order_id = ANY(%s)", (order_ids,))
        return int(cur.fetchone()[0])


def drain(
    settings: Settings,
    tools: PeerTools,
    *,
    topic: str,
    name: str,
    expected: int,
    last_ids: list[str],
    sink_url: URL,
    admin_url: URL,
    work_dir: Path,
    log_dir: Path,
) -> DrainResult:
    """Start Connect with the sink; time it to ``expected`` rows in the table.

    Progress is read as the rows of ``last_ids`` present (three primary-key look-ups),
    not as ``count(*)``: a scan of the growing table ten times a second would take CPU
    from the sink it measures.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    worker = _properties(
        work_dir / "worker.properties", worker_properties(settings, tools, port, work_dir)
    )
    connector = _properties(
        work_dir / "connector.properties", connector_properties(name, topic, sink_url)
    )
    argv = [
        tools.java,
        # What Kafka's own connect-standalone.sh and kafka-run-class.sh start it with.
        "-Xms256M",
        "-Xmx2G",
        "-server",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:InitiatingHeapOccupancyPercent=35",
        "-XX:+ExplicitGCInvokesConcurrent",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={tools.log4j_config}",
        f"-Dkafka.logs.dir={log_dir / name}",
        "-cp",
        f"{tools.libs}/*",
        "org.apache.kafka.connect.cli.ConnectStandalone",
        str(worker),
        str(connector),
    ]
    what = f"the JDBC-sink peer ({expected} orders)"
    # One connection for the progress checks; autocommit, so each sees the latest commits.
    progress = connect(admin_url, autocommit=True)
    try:
        proc = ChildProcess(argv, os.environ, log_dir / f"{name}.log")
    except BaseException:
        progress.close()
        raise
    try:
        done = 0
        checked = 0.0
        deadline = proc.started + START_TIMEOUT_S + expected / 200
        while done < len(last_ids):
            code = proc.proc.poll()
            if code is not None:
                raise PeerUnavailable(f"Kafka Connect exited with {code}: {proc.tail(2)}")
            now = time.monotonic()
            if now - checked >= 2.0:
                checked = now
                failure = _task_failure(port, name)
                if failure is not None:
                    raise PeerUnavailable(f"the JDBC sink failed: {failure}")
            if now > deadline:
                rows = _count_rows(admin_url)
                raise PeerUnavailable(f"{what} wrote {rows} rows in {now - proc.started:.0f}s")
            done = _present(progress, last_ids)
            if done < len(last_ids):
                time.sleep(PROGRESS_INTERVAL_S)  # poll interval of a deadline loop
        elapsed = time.monotonic() - proc.started
        rows = _count_rows(admin_url)
    finally:
        progress.close()
        proc.stop()
        for path in (worker, connector):
            path.unlink(missing_ok=True)
    if rows != expected:
        raise PeerUnavailable(f"{what}: the table holds {rows} rows")
    _rows, span, last_batch = _row_stats(admin_url)
    return DrainResult(
        consumers=1,
        rows=rows,
        elapsed_s=elapsed,
        steady_s=span,
        steady_rows=rows - last_batch,
        rss_mib=proc.rss.peak_mib,
    )
