"""The audit: does PostgreSQL hold exactly what Kafka says it should?

This is the invariant every reliability test ends with, made available to users as
``foodpipe audit``. It reads every retained message of the orders topic, classifies
each one with the consumer's own validation (:func:`foodpipe.consumer.decode.decode`,
the shared ``Order`` model), reads the dead-letter topic and the ``orders`` table, and
compares:

- **loss**: a valid order below the group's committed offset with no row. The consumer
  commits an offset only after the rows before it are committed, so this must be empty;
- **pending**: a valid order at or after the committed offset with no row yet (lag);
- **extra rows**: rows no message of the topic explains (not even a dead-lettered one
  that ``foodpipe dlq replay`` recovered);
- **duplicate rows**: impossible with the primary key, checked anyway;
- **dead letters**: every invalid message below the committed offset has a DLQ record
  (``dlq-original-*`` headers) and every DLQ record points at an invalid message, or at
  a valid order PostgreSQL refused (``db_constraint``);
- **lag**: log-end minus committed offsets, per partition.

Redeliveries are reported, never counted as failures: the producer may send an order
twice (an application retry after a lost acknowledgement), and the consumer may
dead-letter a message twice (a crash between the DLQ confirmation and the offset
commit). Both are harmless by design.

Reading order makes the audit safe on a running pipeline:

1. the committed offsets ``C`` (the consumer commits only after its DB commit);
2. the log-end offsets ``H`` of the topic, which bound the messages read;
3. the dead-letter topic, to its end (every dead letter below ``C`` is already there);
4. the topic, up to ``H``, keeping only order ids (memory grows with the number of
   distinct orders, about 100 bytes each, never with message sizes);
5. the table, streamed: rows of orders below ``C`` must be there. A row that no message
   below ``H`` explains is looked up in the messages produced since (``H`` to now)
   before it is called extra.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka.admin import AdminClient
from sqlalchemy import Engine, func, select

from foodpipe.consumer.classify import ErrorClass
from foodpipe.consumer.decode import decode, order_id_of
from foodpipe.consumer.dlq import (
    HEADER_ERROR_CLASS,
    HEADER_ORIGINAL_OFFSET,
    HEADER_ORIGINAL_PARTITION,
    HEADER_ORIGINAL_TOPIC,
    header_map,
)
from foodpipe.db import make_engine, orders
from foodpipe.errors import PoisonMessage
from foodpipe.kafka import admin_config
from foodpipe.offsets import KafkaView, TopicMissing, read_range
from foodpipe.settings import Settings

#: How many example ids or positions a report lists per finding.
SAMPLE = 20

# States of a valid order id while the table is streamed.
_TAIL, _COMMITTED, _FOUND = 0, 1, 2

Position = tuple[int, int]  # (partition, offset)


@dataclass(frozen=True)
class Check:
    """One line of the audit: ``ok`` False means an inconsistency (exit 1)."""

    name: str
    ok: bool
    kafka: str
    database: str
    detail: str
    count: int = 0
    sample: tuple[str, ...] = ()
    informational: bool = False


@dataclass(frozen=True)
class PartitionAudit:
    partition: int
    log_start: int
    log_end: int
    committed: int | None
    valid: int
    invalid: int

    @property
    def lag(self) -> int:
        position = self.committed if self.committed is not None else self.log_start
        return max(self.log_end - position, 0)


@dataclass
class AuditReport:
    topic: str
    dlq_topic: str
    group: str
    partitions: list[PartitionAudit] = field(default_factory=list)
    messages: int = 0
    valid_messages: int = 0
    distinct_orders: int = 0
    invalid_messages: int = 0
    producer_repeats: int = 0
    rows: int = 0
    distinct_rows: int = 0
    duplicate_rows: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    recovered: int = 0
    late_rows: int = 0
    refused: list[str] = field(default_factory=list)
    dlq_messages: int = 0
    dlq_records: int = 0
    dlq_repeats: int = 0
    dlq_by_class: dict[str, int] = field(default_factory=dict)
    undead: list[str] = field(default_factory=list)
    unexplained_dead: list[str] = field(default_factory=list)
    not_yet_dead: int = 0
    truncated: bool = False
    dlq_truncated: bool = False
    allow_lag: bool = False

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    @property
    def checks(self) -> list[Check]:
        return build_checks(self)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "topic": self.topic,
            "dlq_topic": self.dlq_topic,
            "group": self.group,
            "lag": self.lag,
            "messages": self.messages,
            "valid_messages": self.valid_messages,
            "distinct_orders": self.distinct_orders,
            "invalid_messages": self.invalid_messages,
            "producer_repeats": self.producer_repeats,
            "rows": self.rows,
            "distinct_rows": self.distinct_rows,
            "lost": len(self.lost),
            "pending": len(self.pending),
            "extra": len(self.extra),
            "duplicate_rows": len(self.duplicate_rows),
            "recovered_by_replay": self.recovered,
            "late_rows": self.late_rows,
            "refused_by_database": len(self.refused),
            "dlq_messages": self.dlq_messages,
            "dlq_records": self.dlq_records,
            "dlq_repeats": self.dlq_repeats,
            "dlq_by_class": dict(sorted(self.dlq_by_class.items())),
            "poison_not_dead_lettered": len(self.undead),
            "unexplained_dead_letters": len(self.unexplained_dead),
            "truncated_by_retention": self.truncated,
            "partitions": [
                {
                    "partition": p.partition,
                    "log_start": p.log_start,
                    "log_end": p.log_end,
                    "committed": p.committed,
                    "lag": p.lag,
                    "valid": p.valid,
                    "invalid": p.invalid,
                }
                for p in self.partitions
            ],
            "checks": [
                {
                    "name": c.name,
                    "ok": c.ok,
                    "kafka": c.kafka,
                    "database": c.database,
                    "detail": c.detail,
                    "count": c.count,
                    "sample": list(c.sample),
                    "informational": c.informational,
                }
                for c in self.checks
            ],
        }


def build_checks(r: AuditReport) -> list[Check]:
    """The report as rows of one table. Pure: unit-tested without services."""

    def sample(values: Iterable[str]) -> tuple[str, ...]:
        return tuple(sorted(values)[:SAMPLE])

    extra_ok = not r.extra or r.truncated
    extra_detail = (
        "every row is explained by a message"
        if not r.extra
        else (
            "rows without a retained message: retention deleted older messages, so this is expected"
            if r.truncated
            else "rows no message of the topic explains"
        )
    )
    undead_ok = not r.undead or r.dlq_truncated
    lag_ok = r.lag == 0 or r.allow_lag
    return [
        Check(
            "orders",
            True,
            f"{r.messages} messages: {r.valid_messages} valid ({r.distinct_orders} distinct"
            f" orders), {r.invalid_messages} invalid",
            f"{r.rows} rows ({r.distinct_rows} distinct order_id)"
            + (f", {r.late_rows} of orders produced during the audit" if r.late_rows else ""),
            "what was compared",
            informational=True,
        ),
        Check(
            "loss",
            not r.lost,
            "valid orders below the committed offsets",
            f"{len(r.lost)} missing",
            "every committed order is stored" if not r.lost else "committed orders with no row",
            len(r.lost),
            sample(r.lost),
        ),
        Check(
            "pending",
            not r.pending or r.allow_lag,
            "valid orders not consumed yet",
            f"{len(r.pending)} not stored yet",
            "nothing pending" if not r.pending else "the consumers have not reached them yet",
            len(r.pending),
            sample(r.pending),
        ),
        Check(
            "extra rows",
            extra_ok,
            "-",
            f"{len(r.extra)} unexplained rows",
            extra_detail,
            len(r.extra),
            sample(r.extra),
        ),
        Check(
            "duplicate rows",
            not r.duplicate_rows,
            "-",
            f"{len(r.duplicate_rows)} order_id stored twice",
            "the primary key holds" if not r.duplicate_rows else "order_id stored more than once",
            len(r.duplicate_rows),
            sample(r.duplicate_rows),
        ),
        Check(
            "dead letters",
            undead_ok and not r.unexplained_dead,
            f"{r.invalid_messages} invalid messages, {r.dlq_records} DLQ records"
            f" ({r.dlq_messages} in the DLQ topic)",
            f"{len(r.refused)} orders refused by PostgreSQL",
            _dead_letter_detail(r),
            len(r.undead) + len(r.unexplained_dead),
            sample([*r.undead, *r.unexplained_dead]),
        ),
        Check(
            "redeliveries",
            True,
            f"{r.producer_repeats} orders sent again, {r.dlq_repeats} dead-lettered again",
            f"{r.recovered} rows recovered by dlq replay",
            "harmless by design (idempotent write); reported, not failures",
            r.producer_repeats + r.dlq_repeats,
            informational=True,
        ),
        Check(
            "lag",
            lag_ok,
            f"log end {sum(p.log_end for p in r.partitions)}, committed"
            f" {sum(p.committed or 0 for p in r.partitions)}",
            "-",
            f"group {r.group} lags {r.lag} messages"
            + (" (allowed by --allow-lag)" if r.lag and r.allow_lag else ""),
            r.lag,
        ),
    ]


def _dead_letter_detail(r: AuditReport) -> str:
    problems = []
    if r.undead:
        problems.append(
            f"{len(r.undead)} invalid messages below the committed offset have no DLQ record"
        )
        if r.dlq_truncated:
            problems[-1] += " (retention deleted older dead letters: expected)"
    if r.unexplained_dead:
        problems.append(f"{len(r.unexplained_dead)} DLQ records point at valid orders")
    if r.not_yet_dead:
        problems.append(f"{r.not_yet_dead} invalid messages not consumed yet")
    return "; ".join(problems) or "every invalid message is dead-lettered, and nothing else"


def audit(
    settings: Settings,
    *,
    engine: Engine | None = None,
    admin: AdminClient | None = None,
    group: str | None = None,
    allow_lag: bool = False,
    timeout_s: float = 300.0,
) -> AuditReport:
    """Compare Kafka with PostgreSQL; see the module docstring. Raises on unreachable."""
    admin = admin if admin is not None else AdminClient(admin_config(settings))
    own_engine = engine is None
    db = engine if engine is not None else make_engine(settings)
    try:
        return _audit(
            settings, db, KafkaView(admin, min(timeout_s, 30.0)), group, allow_lag, timeout_s
        )
    finally:
        if own_engine:
            db.dispose()


def _audit(
    settings: Settings,
    engine: Engine,
    view: KafkaView,
    group_id: str | None,
    allow_lag: bool,
    timeout_s: float,
) -> AuditReport:
    topic, dlq_topic = settings.kafka_topic, settings.kafka_dlq_topic
    group = group_id or settings.kafka_consumer_group
    report = AuditReport(topic, dlq_topic, group, allow_lag=allow_lag)

    # 1-2: committed offsets, then log ends.
    partitions = view.partitions(topic)
    committed = view.committed(group, topic, partitions)
    marks = view.watermarks(topic, partitions)
    report.truncated = any(low > 0 for low, _high in marks.values())

    # 3: the dead-letter topic.
    dead_origins, refused_ids = _read_dlq(settings, view, report, marks, timeout_s)

    # 4: the topic, up to the log ends.
    states: dict[str, int] = {}
    invalid_ids: set[str] = set()
    per_partition_valid: Counter[int] = Counter()
    per_partition_invalid: Counter[int] = Counter()
    ranges = {p: marks[p] for p in partitions}
    for message in read_range(settings, topic, ranges, timeout_s):
        partition = int(message.partition() or 0)
        offset = int(message.offset() or 0)
        report.messages += 1
        done = committed.get(partition)
        below = done is not None and offset < done
        try:
            order = decode(message.key(), message.value())
        except PoisonMessage:
            report.invalid_messages += 1
            per_partition_invalid[partition] += 1
            maybe_id = order_id_of(message.value())
            if maybe_id is not None:
                invalid_ids.add(maybe_id)
            origin = f"{partition}@{offset}"
            if origin in dead_origins:
                del dead_origins[origin]
            elif below:
                report.undead.append(origin)
            else:
                report.not_yet_dead += 1
            continue
        report.valid_messages += 1
        per_partition_valid[partition] += 1
        previous = states.get(order.order_id)
        if previous is not None:
            report.producer_repeats += 1
        state = _COMMITTED if below else _TAIL
        states[order.order_id] = max(previous or 0, state)
        if order.order_id in refused_ids:
            # A DLQ record for a *valid* message is expected only when PostgreSQL refused it.
            dead_origins.pop(f"{partition}@{offset}", None)
    report.distinct_orders = len(states)
    # DLQ records left over point at valid messages PostgreSQL did not refuse, or at
    # nothing at all: neither should exist.
    report.unexplained_dead = sorted(dead_origins)

    # 5: the table.
    unexplained: list[str] = []
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=10_000).execute(
            select(orders.c.order_id)
        )
        for (order_id,) in result:
            report.rows += 1
            if order_id in refused_ids or (order_id in invalid_ids and order_id not in states):
                report.recovered += 1  # dead-lettered once, written by `foodpipe dlq replay`
            if order_id in states:
                states[order_id] = _FOUND
            elif order_id not in invalid_ids:
                unexplained.append(order_id)
        duplicates = conn.execute(
            select(orders.c.order_id).group_by(orders.c.order_id).having(func.count() > 1)
        )
        report.duplicate_rows = [str(row[0]) for row in duplicates]
    report.distinct_rows = report.rows - len(report.duplicate_rows)
    for order_id, state in states.items():
        if state == _FOUND or order_id in refused_ids:
            continue
        (report.lost if state == _COMMITTED else report.pending).append(order_id)
    report.refused = sorted(refused_ids - {i for i, s in states.items() if s == _FOUND})
    if unexplained:
        report.extra = _explain_late_rows(settings, view, marks, unexplained, report, timeout_s)
    report.partitions = [
        PartitionAudit(
            p,
            marks[p][0],
            marks[p][1],
            committed.get(p),
            per_partition_valid[p],
            per_partition_invalid[p],
        )
        for p in partitions
    ]
    return report


def _read_dlq(
    settings: Settings,
    view: KafkaView,
    report: AuditReport,
    marks: dict[int, tuple[int, int]],
    timeout_s: float,
) -> tuple[dict[str, int], set[str]]:
    """``({"partition@offset": records}, {order ids refused by PostgreSQL})``.

    Only DLQ records of *this* topic below its log-end snapshot are kept; a record for a
    message beyond the snapshot belongs to a later audit.
    """
    try:
        partitions = view.partitions(settings.kafka_dlq_topic)
    except TopicMissing:
        return {}, set()
    dlq_marks = view.watermarks(settings.kafka_dlq_topic, partitions)
    report.dlq_messages = sum(high - low for low, high in dlq_marks.values())
    report.dlq_truncated = any(low > 0 for low, _high in dlq_marks.values())
    origins: dict[str, int] = {}
    refused: set[str] = set()
    by_class: Counter[str] = Counter()
    for message in read_range(settings, settings.kafka_dlq_topic, dlq_marks, timeout_s):
        raw_headers = message.headers()
        headers = header_map(raw_headers if isinstance(raw_headers, list) else None)
        if headers.get(HEADER_ORIGINAL_TOPIC) != settings.kafka_topic:
            continue
        try:
            partition = int(headers[HEADER_ORIGINAL_PARTITION])
            offset = int(headers[HEADER_ORIGINAL_OFFSET])
        except (KeyError, ValueError):
            continue
        if partition not in marks or offset >= marks[partition][1]:
            continue
        error_class = headers.get(HEADER_ERROR_CLASS, "")
        by_class[error_class] += 1
        origin = f"{partition}@{offset}"
        if origin in origins:
            report.dlq_repeats += 1
        origins[origin] = origins.get(origin, 0) + 1
        if error_class == ErrorClass.DB_CONSTRAINT:
            order_id = order_id_of(message.value())
            if order_id is not None:
                refused.add(order_id)
    report.dlq_records = len(origins)
    report.dlq_by_class = dict(by_class)
    return origins, refused


def _explain_late_rows(
    settings: Settings,
    view: KafkaView,
    marks: dict[int, tuple[int, int]],
    unexplained: list[str],
    report: AuditReport,
    timeout_s: float,
) -> list[str]:
    """Rows of orders produced after the log-end snapshot are not extra: look them up."""
    now = view.watermarks(settings.kafka_topic, sorted(marks))
    ranges = {p: (marks[p][1], now[p][1]) for p in marks}
    wanted = set(unexplained)
    for message in read_range(settings, settings.kafka_topic, ranges, timeout_s):
        order_id = order_id_of(message.value())
        if order_id in wanted:
            wanted.discard(order_id)
            report.late_rows += 1
    return sorted(wanted)
