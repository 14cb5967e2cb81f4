"""``foodpipe status``: the topic, the consumer group and the table, at a glance.

For each partition of the orders topic: the log-end offset, the group's committed
offset, the lag between them, and which group member owns the partition. Below: the
group's state, the rows in PostgreSQL, the dead-letter topic's size and the recent
throughput (rows whose ``processed_at`` lies in the last 10 s and 60 s).

``--watch`` redraws every ``--interval`` seconds and adds the rates at which the log end
(produced) and the committed offsets (consumed) moved since the previous refresh; it
is the quickest way to *see* partitions, offsets, lag and rebalances move.
``--json`` prints one JSON document (one per refresh, one per line, with ``--watch``).

Looking never joins the group or commits anything: offsets and members come from the
admin API (:mod:`foodpipe.offsets`). Exit codes: 0; 1 when the topic is missing;
3 when Kafka or PostgreSQL cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text
from sqlalchemy import ColumnElement, Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from foodpipe.commands.argtypes import number
from foodpipe.commands.inert import inert
from foodpipe.db import make_engine, orders
from foodpipe.kafka import admin_config, wait_for_broker
from foodpipe.log import configure_logging, scrub
from foodpipe.offsets import KafkaView, TopicMissing, TopicState
from foodpipe.settings import Settings

#: Windows of the "recent throughput" figures, in seconds.
WINDOWS = (10, 60)

OK, PROBLEM, UNREACHABLE = 0, 1, 3


@dataclass(frozen=True)
class DatabaseState:
    rows: int | None = None
    recent: dict[int, int] = field(default_factory=dict)
    last_processed_at: datetime | None = None
    error: str | None = None


@dataclass(frozen=True)
class Snapshot:
    taken_at: datetime
    monotonic: float
    topic: TopicState | None
    dlq_topic: str
    dlq_messages: int | None
    database: DatabaseState
    kafka_error: str | None = None
    kafka_unreachable: bool = False

    @property
    def exit_code(self) -> int:
        if self.kafka_unreachable or self.database.error is not None:
            return UNREACHABLE
        return PROBLEM if self.kafka_error is not None else OK


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--watch", action="store_true", help="refresh until Ctrl-C (with --json: one line each)"
    )
    parser.add_argument(
        "--interval",
        type=number(above=0),
        default=2.0,
        metavar="SECONDS",
        help="refresh interval of --watch (default 2)",
    )
    parser.add_argument(
        "--timeout",
        type=number(above=0),
        default=10.0,
        metavar="SECONDS",
        help="deadline of each request to Kafka or PostgreSQL (default 10)",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    # stdout is the report; diagnostics (ours and librdkafka's) go to stderr.
    configure_logging(settings.log_level, settings.log_format, stream=sys.stderr)
    admin = AdminClient(admin_config(settings))
    wait_for_broker(admin, settings, args.timeout)
    view = KafkaView(admin, args.timeout)
    engine = make_engine(settings)
    try:
        if not args.watch:
            snapshot = collect(view, engine, settings)
            _emit(snapshot, None, args.json)
            return snapshot.exit_code
        return _watch(view, engine, settings, args)
    finally:
        engine.dispose()


def _emit(snapshot: Snapshot, previous: Snapshot | None, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(to_dict(snapshot, previous), sort_keys=True) + "\n")
        sys.stdout.flush()
    else:
        Console().print(render(snapshot, previous))


def _watch(view: KafkaView, engine: Engine, settings: Settings, args: argparse.Namespace) -> int:
    previous: Snapshot | None = None
    stop = threading.Event()
    # Explicit handlers rather than KeyboardInterrupt: a process started with SIGINT
    # ignored (a background job of a script) never gets KeyboardInterrupt from Python.
    previous_handlers = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        if args.json:
            while not stop.is_set():
                snapshot = collect(view, engine, settings)
                _emit(snapshot, previous, as_json=True)
                previous = snapshot
                stop.wait(args.interval)  # the refresh interval of a live view
            return OK
        with Live(Text("reading..."), auto_refresh=False, console=Console()) as live:
            while not stop.is_set():
                snapshot = collect(view, engine, settings)
                live.update(render(snapshot, previous), refresh=True)
                previous = snapshot
                stop.wait(args.interval)  # the refresh interval of a live view
        return OK
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)


# --------------------------------------------------------------------------- collect


def collect(view: KafkaView, engine: Engine, settings: Settings) -> Snapshot:
    """One consistent-enough look at Kafka and PostgreSQL; errors become fields."""
    taken_at = datetime.now(UTC)
    monotonic = time.monotonic()
    topic: TopicState | None = None
    dlq_messages: int | None = None
    kafka_error: str | None = None
    unreachable = False
    try:
        topic = view.topic_state(settings.kafka_topic, settings.kafka_consumer_group)
        dlq_partitions = view.partitions(settings.kafka_dlq_topic)
        marks = view.watermarks(settings.kafka_dlq_topic, dlq_partitions)
        dlq_messages = sum(max(high - low, 0) for low, high in marks.values())
    except TopicMissing as exc:
        kafka_error = str(exc)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else exc
        kafka_error = f"Kafka did not answer: {getattr(error, 'str', lambda: str(error))()}"
        unreachable = True
    return Snapshot(
        taken_at=taken_at,
        monotonic=monotonic,
        topic=topic,
        dlq_topic=settings.kafka_dlq_topic,
        dlq_messages=dlq_messages,
        database=database_state(engine),
        kafka_error=kafka_error,
        kafka_unreachable=unreachable,
    )


def database_state(engine: Engine) -> DatabaseState:
    """Row count and rows processed in the last :data:`WINDOWS` seconds, in one scan."""
    now = func.now()
    columns: list[ColumnElement[Any]] = [func.count()]
    columns += [
        func.count().filter(orders.c.processed_at > now - timedelta(seconds=window))
        for window in WINDOWS
    ]
    columns.append(func.max(orders.c.processed_at))
    try:
        with engine.connect() as conn:
            row = conn.execute(select(*columns)).one()
    except SQLAlchemyError as exc:
        original = getattr(exc, "orig", None) or exc
        first = str(original).strip().splitlines()[0] if str(original).strip() else ""
        return DatabaseState(error=scrub(f"PostgreSQL at {engine.url.render_as_string()}: {first}"))
    counts = list(row)
    return DatabaseState(
        rows=int(counts[0]),
        recent={window: int(counts[1 + i]) for i, window in enumerate(WINDOWS)},
        last_processed_at=counts[-1],
    )


# --------------------------------------------------------------------------- output


def _rates(snapshot: Snapshot, previous: Snapshot | None) -> tuple[float, float] | None:
    """(produced/s, consumed/s) from the movement of log end and committed offsets."""
    if previous is None or previous.topic is None or snapshot.topic is None:
        return None
    elapsed = snapshot.monotonic - previous.monotonic
    if elapsed <= 0:
        return None
    produced = (snapshot.topic.log_end - previous.topic.log_end) / elapsed
    consumed = (snapshot.topic.committed - previous.topic.committed) / elapsed
    return max(produced, 0.0), max(consumed, 0.0)


def to_dict(snapshot: Snapshot, previous: Snapshot | None = None) -> dict[str, Any]:
    topic = snapshot.topic
    db = snapshot.database
    document: dict[str, Any] = {
        "taken_at": snapshot.taken_at.isoformat(),
        "kafka_error": snapshot.kafka_error,
        "topic": None,
        "group": None,
        "lag": None,
        "dlq": {"topic": snapshot.dlq_topic, "messages": snapshot.dlq_messages},
        "database": {
            "rows": db.rows,
            **{f"processed_last_{w}s": db.recent.get(w) for w in WINDOWS},
            **{
                f"rows_per_s_{w}s": (round(db.recent[w] / w, 1) if w in db.recent else None)
                for w in WINDOWS
            },
            "last_processed_at": db.last_processed_at.isoformat() if db.last_processed_at else None,
            "error": db.error,
        },
        "exit_code": snapshot.exit_code,
    }
    if topic is not None:
        document["topic"] = {
            "name": topic.topic,
            "log_end": topic.log_end,
            "messages": topic.messages,
            "partitions": [
                {
                    "partition": p.partition,
                    "log_start": p.log_start,
                    "log_end": p.log_end,
                    "committed": p.committed,
                    "lag": p.lag,
                    "owner": p.owner.to_dict() if p.owner else None,
                }
                for p in topic.partitions
            ],
        }
        document["group"] = {
            "id": topic.group.group,
            "state": topic.group.state,
            "protocol": topic.group.protocol or None,
            "members": [
                {
                    **member.to_dict(),
                    "partitions": sorted(
                        partition for name, partition in member.partitions if name == topic.topic
                    ),
                }
                for member in topic.group.members
            ],
        }
        document["lag"] = topic.lag
    rates = _rates(snapshot, previous)
    if rates is not None:
        document["rates"] = {
            "produced_per_s": round(rates[0], 1),
            "consumed_per_s": round(rates[1], 1),
        }
    return document


def render(snapshot: Snapshot, previous: Snapshot | None = None) -> RenderableType:
    parts: list[RenderableType] = []
    topic = snapshot.topic
    stamp = snapshot.taken_at.astimezone().strftime("%H:%M:%S")
    if topic is None:
        parts.append(Text(f"foodpipe status  {stamp}", style="bold"))
        parts.append(Text(f"Kafka: {snapshot.kafka_error}", style="red"))
    else:
        group = topic.group
        title = (
            f"topic {topic.topic}  ·  group {group.group} ({group.state.lower()}, "
            f"{len(group.members)} member{'s' if len(group.members) != 1 else ''})  ·  {stamp}"
        )
        parts.append(Text(title, style="bold"))
        table = Table(show_footer=True)
        table.add_column("partition", "total", justify="right")
        table.add_column("log end", str(topic.log_end), justify="right")
        table.add_column("committed", str(topic.committed), justify="right")
        lag_style = "green" if topic.lag == 0 else "yellow"
        table.add_column("lag", Text(str(topic.lag), style=lag_style), justify="right")
        table.add_column("owner (client@host#member)", "")
        for p in topic.partitions:
            table.add_row(
                str(p.partition),
                str(p.log_end),
                "-" if p.committed is None else str(p.committed),
                Text(str(p.lag), style="green" if p.lag == 0 else "yellow"),
                inert(p.owner.short) if p.owner else Text("unassigned", style="dim"),
            )
        parts.append(table)
    db = snapshot.database
    lines = Table.grid(padding=(0, 2))
    lines.add_column(style="bold")
    lines.add_column()
    if db.error is not None:
        lines.add_row("PostgreSQL", Text(db.error, style="red"))
    else:
        recent = ", ".join(
            f"{db.recent.get(w, 0)} in the last {w} s ({db.recent.get(w, 0) / w:.1f}/s)"
            for w in WINDOWS
        )
        lines.add_row("rows in orders", str(db.rows))
        lines.add_row("recent writes", recent)
    dlq = "missing" if snapshot.dlq_messages is None else f"{snapshot.dlq_messages} messages"
    lines.add_row("dead letters", f"{dlq} in {snapshot.dlq_topic}")
    if topic is not None and snapshot.kafka_error is not None:
        lines.add_row("Kafka", Text(snapshot.kafka_error, style="red"))
    rates = _rates(snapshot, previous)
    if rates is not None:
        lines.add_row("offsets moving", f"produced {rates[0]:.1f}/s, consumed {rates[1]:.1f}/s")
    parts.append(lines)
    return Group(*parts)
