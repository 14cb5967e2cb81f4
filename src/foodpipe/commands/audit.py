"""``foodpipe audit``: compare what Kafka holds with what PostgreSQL holds.

Reads every retained message of the orders topic and the dead-letter topic, and the
``orders`` table, and reports loss, pending orders, extra and duplicate rows, dead
letters and lag in one table (the logic and its reading order: :mod:`foodpipe.audit`).

Exit codes: 0 consistent; 1 an inconsistency (including lag, unless ``--allow-lag``);
2 the topic does not exist; 3 Kafka or PostgreSQL cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import sys

from confluent_kafka.admin import AdminClient
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy.exc import SQLAlchemyError

from foodpipe.audit import AuditReport, audit
from foodpipe.commands.argtypes import number
from foodpipe.kafka import admin_config, wait_for_broker
from foodpipe.log import configure_logging, scrub
from foodpipe.offsets import ReadTimeout, TopicMissing
from foodpipe.settings import ConfigError, Settings

CONSISTENT, INCONSISTENT, UNREACHABLE = 0, 1, 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--allow-lag",
        action="store_true",
        help="on a running pipeline: orders not consumed yet are reported, not failures"
        " (loss below the committed offsets still fails)",
    )
    parser.add_argument(
        "--group",
        default=None,
        metavar="GROUP",
        help="consumer group whose committed offsets to check (default KAFKA_CONSUMER_GROUP)",
    )
    parser.add_argument(
        "--timeout",
        type=number(above=0),
        default=300.0,
        metavar="SECONDS",
        help="deadline for reading the topics (default 300)",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    configure_logging(settings.log_level, settings.log_format, stream=sys.stderr)
    admin = AdminClient(admin_config(settings))
    wait_for_broker(admin, settings, min(args.timeout, 30.0))
    try:
        report = audit(
            settings,
            admin=admin,
            group=args.group,
            allow_lag=args.allow_lag,
            timeout_s=args.timeout,
        )
    except TopicMissing as exc:
        raise ConfigError(str(exc)) from None
    except ReadTimeout as exc:
        sys.stderr.write(f"foodpipe: {exc}; is the broker overloaded? try --timeout\n")
        return UNREACHABLE
    except SQLAlchemyError as exc:
        original = getattr(exc, "orig", None) or exc
        lines = str(original).strip().splitlines()
        sys.stderr.write(
            f"foodpipe: cannot read the orders table at {settings.redacted_database_url()}"
            f" ({scrub(lines[0] if lines else type(exc).__name__)}); check DATABASE_URL\n"
        )
        return UNREACHABLE
    if args.json:
        sys.stdout.write(json.dumps(report.to_dict(), sort_keys=True) + "\n")
    else:
        Console().print(render(report))
    return CONSISTENT if report.ok else INCONSISTENT


def render(report: AuditReport) -> Table:
    verdict = (
        Text("CONSISTENT", style="bold green")
        if report.ok
        else Text("INCONSISTENT", style="bold red")
    )
    table = Table(
        title=Text.assemble(
            "foodpipe audit: ",
            verdict,
            f"  (topic {report.topic}, group {report.group}, DLQ {report.dlq_topic})",
        ),
        title_justify="left",
    )
    table.add_column("check")
    table.add_column("result")
    table.add_column("Kafka")
    table.add_column("PostgreSQL")
    table.add_column("detail")
    for check in report.checks:
        if check.informational:
            mark = Text("info", style="dim")
        else:
            mark = Text("ok", style="green") if check.ok else Text("FAIL", style="bold red")
        detail = check.detail
        if check.sample and not check.ok:
            detail += (
                ": " + ", ".join(check.sample) + (" ..." if check.count > len(check.sample) else "")
            )
        table.add_row(check.name, mark, check.kafka, check.database, detail)
    return table
