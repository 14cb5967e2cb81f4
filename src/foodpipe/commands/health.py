"""``foodpipe health``: is the pipeline healthy? One report and one exit code.

The checks, in order:

- ``broker``: a Kafka broker answers a metadata request.
- ``topic``: the orders topic exists with ``KAFKA_TOPIC_PARTITIONS`` partitions.
- ``dlq_topic``: the dead-letter topic exists.
- ``database``: PostgreSQL accepts the configured credentials and the ``orders`` table
  is readable by them (so the schema and the app role's grants are in place).
- ``consumer_group``: ``KAFKA_CONSUMER_GROUP`` has at least ``--min-members`` active
  members.
- ``lag``: the group's total lag on the orders topic (log-end offset minus committed
  offset, summed over partitions) is at most ``--max-lag``.

Kafka checks after ``broker`` are skipped when no broker answers; the database check
always runs, so one report names every broken dependency at once.

Exit codes follow the CLI's convention: 0 healthy; 1 a check failed; 3 Kafka or
PostgreSQL is unreachable or refused the credentials. ``scripts/healthcheck.sh`` runs
this command natively, against the local stack, or inside a Compose container.

The report goes to stdout (a table, or one JSON document with ``--json``); log lines,
including librdkafka's, go to stderr so the JSON stays parseable.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._metadata import ClusterMetadata
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from foodpipe.commands.argtypes import number, whole
from foodpipe.kafka import admin_config
from foodpipe.log import configure_logging, scrub
from foodpipe.offsets import KafkaView, TopicMissing
from foodpipe.settings import Settings

Status = Literal["ok", "fail", "skip"]

#: Exit codes (see foodpipe.cli).
HEALTHY, UNHEALTHY, UNREACHABLE = 0, 1, 3

#: How often ``--wait`` re-runs the checks.
WAIT_POLL_S = 2.0


@dataclass(frozen=True)
class Check:
    """The outcome of one check. ``unreachable`` marks a dependency that did not answer."""

    name: str
    status: Status
    detail: str
    data: Mapping[str, Any] = field(default_factory=dict)
    unreachable: bool = False


@dataclass(frozen=True)
class Report:
    checks: list[Check]

    @property
    def healthy(self) -> bool:
        return all(check.status == "ok" for check in self.checks)

    @property
    def exit_code(self) -> int:
        if self.healthy:
            return HEALTHY
        if any(check.unreachable for check in self.checks):
            return UNREACHABLE
        return UNHEALTHY

    def to_dict(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "exit_code": self.exit_code,
            "checks": [
                {key: value for key, value in asdict(check).items() if key != "unreachable"}
                | {"unreachable": check.unreachable}
                for check in self.checks
            ],
        }


@dataclass(frozen=True)
class Thresholds:
    max_lag: int
    min_members: int
    timeout_s: float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-lag",
        type=whole(low=0),
        default=1000,
        metavar="N",
        help="unhealthy when the group lags more than N messages (default 1000)",
    )
    parser.add_argument(
        "--min-members",
        type=whole(low=0),
        default=1,
        metavar="N",
        help="unhealthy when the group has fewer than N active members (default 1; "
        "0 when no consumer is expected to run)",
    )
    parser.add_argument(
        "--timeout",
        type=number(above=0),
        default=10.0,
        metavar="SECONDS",
        help="deadline of each request to Kafka or PostgreSQL (default 10)",
    )
    parser.add_argument(
        "--wait",
        type=number(low=0),
        default=0.0,
        metavar="SECONDS",
        help="re-check every 2 s until healthy or SECONDS have passed (default 0: check once)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def run(args: argparse.Namespace, settings: Settings) -> int:
    # The report owns stdout; diagnostics (ours and librdkafka's) go to stderr.
    configure_logging(settings.log_level, settings.log_format, stream=sys.stderr)
    thresholds = Thresholds(args.max_lag, args.min_members, args.timeout)
    admin = AdminClient(admin_config(settings))
    deadline = time.monotonic() + args.wait
    while True:
        report = run_checks(admin, settings, thresholds)
        if report.healthy or time.monotonic() + WAIT_POLL_S > deadline:
            break
        time.sleep(WAIT_POLL_S)
    sys.stdout.write(render_json(report) if args.json else render_text(report))
    sys.stdout.flush()
    return report.exit_code


def run_checks(admin: AdminClient, settings: Settings, thresholds: Thresholds) -> Report:
    broker, metadata = check_broker(admin, settings, thresholds.timeout_s)
    checks = [broker]
    if metadata is None:
        checks += [
            _skipped(name, "no broker answered")
            for name in ("topic", "dlq_topic", "consumer_group", "lag")
        ]
        checks.insert(3, check_database(settings, thresholds.timeout_s))
        return Report(checks)
    checks += check_topics(metadata, settings)
    checks.append(check_database(settings, thresholds.timeout_s))
    view = KafkaView(admin, thresholds.timeout_s)
    checks.append(check_group(view, settings, thresholds.min_members))
    topic = metadata.topics.get(settings.kafka_topic)
    if topic is None or topic.error is not None:
        checks.append(_skipped("lag", f"topic {settings.kafka_topic} is missing"))
    else:
        checks.append(check_lag(view, settings, thresholds.max_lag))
    return Report(checks)


def _skipped(name: str, reason: str) -> Check:
    return Check(name, "skip", f"skipped: {reason}")


def _kafka_error(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else None
    describe = getattr(error, "str", None)
    return str(describe()) if callable(describe) else str(exc)


def check_broker(
    admin: AdminClient, settings: Settings, timeout_s: float
) -> tuple[Check, ClusterMetadata | None]:
    where = settings.kafka_bootstrap_servers
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        detail = (
            f"no Kafka broker answered at {where} within {timeout_s:g}s "
            f"({_kafka_error(exc)}); check KAFKA_BOOTSTRAP_SERVERS and that the broker runs"
        )
        return Check("broker", "fail", detail, unreachable=True), None
    brokers = sorted(f"{b.host}:{b.port}" for b in metadata.brokers.values())
    return (
        Check(
            "broker",
            "ok",
            f"{len(brokers)} broker(s) answering at {where}",
            {"brokers": brokers, "bootstrap": where},
        ),
        metadata,
    )


def check_topics(metadata: ClusterMetadata, settings: Settings) -> list[Check]:
    expected = settings.kafka_topic_partitions
    checks = []
    topic = metadata.topics.get(settings.kafka_topic)
    if topic is None or topic.error is not None:
        checks.append(
            Check(
                "topic",
                "fail",
                f"topic {settings.kafka_topic} is missing; create it with `foodpipe topics`",
                {"topic": settings.kafka_topic, "expected_partitions": expected},
            )
        )
    else:
        have = len(topic.partitions)
        data = {"topic": settings.kafka_topic, "partitions": have, "expected_partitions": expected}
        if have == expected:
            checks.append(Check("topic", "ok", f"{settings.kafka_topic}: {have} partitions", data))
        else:
            checks.append(
                Check(
                    "topic",
                    "fail",
                    f"{settings.kafka_topic} has {have} partitions, expected {expected} "
                    "(KAFKA_TOPIC_PARTITIONS); partitions are never changed automatically",
                    data,
                )
            )
    dlq = metadata.topics.get(settings.kafka_dlq_topic)
    if dlq is None or dlq.error is not None:
        checks.append(
            Check(
                "dlq_topic",
                "fail",
                f"dead-letter topic {settings.kafka_dlq_topic} is missing; "
                "create it with `foodpipe topics`",
                {"topic": settings.kafka_dlq_topic},
            )
        )
    else:
        checks.append(
            Check(
                "dlq_topic",
                "ok",
                f"{settings.kafka_dlq_topic}: {len(dlq.partitions)} partitions",
                {"topic": settings.kafka_dlq_topic, "partitions": len(dlq.partitions)},
            )
        )
    return checks


def check_database(settings: Settings, timeout_s: float) -> Check:
    where = settings.redacted_database_url()
    engine = create_engine(
        settings.sqlalchemy_url(),
        poolclass=NullPool,
        connect_args={
            "connect_timeout": max(1, round(timeout_s)),
            "application_name": "foodpipe-health",
        },
    )
    try:
        with engine.connect() as conn:
            version = conn.execute(text("SHOW server_version")).scalar_one()
            try:
                conn.execute(text("SELECT 1 FROM orders LIMIT 1")).all()
            except DBAPIError as exc:
                return Check(
                    "database",
                    "fail",
                    f"connected to {where}, but the orders table is not readable "
                    f"({_first_line(exc)}); apply src/database/init.sql and "
                    "src/database/app_role.sql",
                    {"url": where, "server_version": version},
                )
    except SQLAlchemyError as exc:
        return Check(
            "database",
            "fail",
            f"cannot use PostgreSQL at {where} ({_first_line(exc)}); check POSTGRES_* "
            "or DATABASE_URL and that the server runs",
            {"url": where},
            unreachable=True,
        )
    finally:
        engine.dispose()
    return Check(
        "database",
        "ok",
        f"PostgreSQL {version} at {where}; orders table readable",
        {"url": where, "server_version": version},
    )


def _first_line(exc: SQLAlchemyError) -> str:
    original = getattr(exc, "orig", None)
    message = str(original if original is not None else exc).strip()
    return scrub(message.splitlines()[0] if message else type(exc).__name__)


def check_group(view: KafkaView, settings: Settings, min_members: int) -> Check:
    group = settings.kafka_consumer_group
    try:
        state = view.group(group)
    except KafkaException as exc:
        return Check(
            "consumer_group",
            "fail",
            f"cannot describe group {group}: {_kafka_error(exc)}",
            {"group": group},
            unreachable=True,
        )
    members = len(state.members)
    assigned = sum(
        1
        for member in state.members
        for topic, _partition in member.partitions
        if topic == settings.kafka_topic
    )
    data = {
        "group": group,
        "state": state.state,
        "members": members,
        "min_members": min_members,
        "assigned_partitions": assigned,
    }
    detail = f"group {group}: {members} active member(s), state {state.state}"
    if members >= min_members:
        return Check("consumer_group", "ok", detail, data)
    return Check(
        "consumer_group",
        "fail",
        f"{detail}; expected at least {min_members}: is `foodpipe consume` running?",
        data,
    )


def check_lag(view: KafkaView, settings: Settings, max_lag: int) -> Check:
    """Lag as ``foodpipe status`` computes it (see foodpipe.offsets): log end minus the
    committed offset, or minus the log start where the group has committed nothing."""
    group, topic = settings.kafka_consumer_group, settings.kafka_topic
    try:
        state = view.topic_state(topic, group)
    except TopicMissing as exc:
        return Check("lag", "fail", str(exc), {"group": group, "topic": topic})
    except KafkaException as exc:
        return Check(
            "lag",
            "fail",
            f"cannot read offsets of group {group} on {topic}: {_kafka_error(exc)}",
            {"group": group, "topic": topic},
            unreachable=True,
        )
    total = state.lag
    data = {
        "group": group,
        "topic": topic,
        "lag": total,
        "max_lag": max_lag,
        "partitions": {str(p.partition): p.lag for p in state.partitions},
    }
    detail = f"group {group} lags {total} message(s) on {topic}"
    if total <= max_lag:
        return Check("lag", "ok", f"{detail} (max {max_lag})", data)
    return Check(
        "lag",
        "fail",
        f"{detail}, more than {max_lag}; the consumers are behind or stopped",
        data,
    )


_MARK: dict[Status, str] = {"ok": "ok", "fail": "FAIL", "skip": "skip"}


def render_text(report: Report) -> str:
    passed = sum(check.status == "ok" for check in report.checks)
    verdict = "HEALTHY" if report.healthy else "UNHEALTHY"
    lines = [f"foodpipe health: {verdict} ({passed}/{len(report.checks)} checks ok)"]
    width = max(len(check.name) for check in report.checks)
    lines += [
        f"  {_MARK[check.status]:<4}  {check.name:<{width}}  {check.detail}"
        for check in report.checks
    ]
    return "\n".join(lines) + "\n"


def render_json(report: Report) -> str:
    return json.dumps(report.to_dict(), sort_keys=True) + "\n"
