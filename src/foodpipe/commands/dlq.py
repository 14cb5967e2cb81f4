"""``foodpipe dlq list|replay``: look at dead-lettered messages, and replay them.

- ``list`` shows each dead letter with where it came from (original topic, partition,
  offset), its error class and its reason.
- ``replay`` sends the selected ones back through the consumer's validation into
  PostgreSQL, and records its progress in a consumer group of its own, so running it
  twice writes nothing new. ``--dry-run`` says what would happen and changes nothing.
  When a replay can write what the consumer refused (a relaxed rule), and how the
  progress record works: :mod:`foodpipe.replay`.

Both take the same filters: ``--error-class`` (repeatable), ``--reason`` (a substring
of the reason), ``--partition`` and ``--offset-range START-END`` (positions in the
dead-letter topic, as ``list`` shows them: ``partition:offset``).

Exit codes: 0; 2 bad usage; 3 Kafka or PostgreSQL unreachable.
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

from foodpipe.commands.argtypes import number, whole
from foodpipe.commands.inert import inert
from foodpipe.consumer.classify import ErrorClass
from foodpipe.db import CONSUMER_SESSION, make_engine, wait_for_database
from foodpipe.kafka import admin_config, wait_for_broker
from foodpipe.log import configure_logging, scrub
from foodpipe.offsets import KafkaView, TopicMissing
from foodpipe.replay import (
    ACCEPTABLE,
    REFUSED,
    SKIPPED,
    WRITTEN,
    DeadLetter,
    Replayer,
    ReplayReport,
    Selection,
    parse_offset_range,
    read_dead_letters,
    replay_group,
)
from foodpipe.settings import ConfigError, Settings

REASON_WIDTH = 90


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="dlq_action", metavar="ACTION", required=True)
    listing = actions.add_parser(
        "list", help="show dead-lettered messages and their reasons", description=__doc__
    )
    _filters(listing)
    listing.add_argument(
        "--limit", type=whole(low=1), default=200, metavar="N", help="show at most N (default 200)"
    )
    listing.add_argument("--json", action="store_true", help="one JSON document")

    replay = actions.add_parser(
        "replay",
        help="send dead letters back through validation into PostgreSQL",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _filters(replay)
    replay.add_argument(
        "--accept",
        action="append",
        default=[],
        metavar="CLASS",
        choices=sorted(ACCEPTABLE),
        help="also accept orders whose only fault is this key rule (repeatable):"
        f" {', '.join(sorted(ACCEPTABLE))}; schema and business rules cannot be overridden",
    )
    replay.add_argument(
        "--dry-run", action="store_true", help="say what would happen; write and commit nothing"
    )
    replay.add_argument(
        "--from-start",
        action="store_true",
        help="ignore the recorded progress and look at every dead letter again (safe:"
        " the write is idempotent)",
    )
    replay.add_argument(
        "--group",
        default=None,
        metavar="GROUP",
        help="consumer group that records replay progress"
        " (default <KAFKA_CONSUMER_GROUP>-dlq-replay)",
    )
    replay.add_argument("--json", action="store_true", help="one JSON document")


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--error-class",
        action="append",
        default=[],
        metavar="CLASS",
        choices=[c.value for c in ErrorClass],
        help="only this error class (repeatable): " + ", ".join(c.value for c in ErrorClass),
    )
    parser.add_argument(
        "--reason", default=None, metavar="TEXT", help="only reasons containing TEXT (any case)"
    )
    parser.add_argument(
        "--partition", type=whole(low=0), default=None, metavar="P", help="only this DLQ partition"
    )
    parser.add_argument(
        "--offset-range",
        default=None,
        metavar="START-END",
        help="only DLQ offsets START..END, both included (10-20, 10- or -20)",
    )
    parser.add_argument(
        "--timeout",
        type=number(above=0),
        default=120.0,
        metavar="SECONDS",
        help="deadline for reading the dead-letter topic (default 120)",
    )


def selection_of(args: argparse.Namespace) -> Selection:
    first = last = None
    if args.offset_range is not None:
        try:
            first, last = parse_offset_range(args.offset_range)
        except ValueError as exc:
            raise ConfigError(f"--offset-range: {exc}") from None
    return Selection(
        error_classes=frozenset(args.error_class),
        reason=args.reason,
        partition=args.partition,
        first_offset=first,
        last_offset=last,
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    configure_logging(settings.log_level, settings.log_format, stream=sys.stderr)
    selection = selection_of(args)
    admin = AdminClient(admin_config(settings))
    wait_for_broker(admin, settings, min(args.timeout, 30.0))
    view = KafkaView(admin, min(args.timeout, 30.0))
    try:
        if args.dlq_action == "list":
            return _list(args, settings, view, selection)
        return _replay(args, settings, view, selection)
    except TopicMissing as exc:
        raise ConfigError(str(exc)) from None


def _list(
    args: argparse.Namespace, settings: Settings, view: KafkaView, selection: Selection
) -> int:
    letters: list[DeadLetter] = []
    total = matched = 0
    for letter in read_dead_letters(settings, view, timeout_s=args.timeout):
        total += 1
        if selection.matches(letter):
            matched += 1
            if len(letters) < args.limit:
                letters.append(letter)
    if args.json:
        document = {
            "topic": settings.kafka_dlq_topic,
            "total": total,
            "matched": matched,
            "shown": len(letters),
            "messages": [letter.to_dict() for letter in letters],
        }
        sys.stdout.write(json.dumps(document, sort_keys=True) + "\n")
        return 0
    table = render_list(settings.kafka_dlq_topic, letters, matched, total)
    Console().print(table)
    return 0


def _replay(
    args: argparse.Namespace, settings: Settings, view: KafkaView, selection: Selection
) -> int:
    engine = make_engine(settings, session=CONSUMER_SESSION)
    try:
        wait_for_database(engine, min(args.timeout, 30.0))
        replayer = Replayer(
            settings,
            view,
            engine,
            group=args.group or replay_group(settings),
            timeout_s=args.timeout,
        )
        try:
            report = replayer.run(
                selection, accept=args.accept, dry_run=args.dry_run, from_start=args.from_start
            )
        except SQLAlchemyError as exc:
            original = getattr(exc, "orig", None) or exc
            lines = str(original).strip().splitlines()
            sys.stderr.write(
                "foodpipe: the replay could not write to PostgreSQL"
                f" ({scrub(lines[0] if lines else type(exc).__name__)}); nothing of the failed"
                " batch was committed, running replay again is safe\n"
            )
            return 3
    finally:
        engine.dispose()
    if args.json:
        sys.stdout.write(json.dumps(report.to_dict(), sort_keys=True) + "\n")
    else:
        Console().print(render_replay(report))
    return 0


def render_list(topic: str, letters: list[DeadLetter], matched: int, total: int) -> Table:
    """The ``dlq list`` table. Every cell that comes from a message is :func:`inert`."""
    table = Table(
        title=inert(
            f"{topic}: {matched} of {total} dead letters match"
            + (f" (first {len(letters)} shown)" if len(letters) < matched else "")
        ),
        title_justify="left",
    )
    for column in ("dlq", "from", "error class", "order_id", "reason", "failed at"):
        table.add_column(column, overflow="fold")
    for letter in letters:
        reason = letter.reason
        if len(reason) > REASON_WIDTH:
            reason = reason[: REASON_WIDTH - 1] + "…"
        table.add_row(
            letter.position,
            inert(letter.origin),
            inert(letter.error_class),
            inert(letter.order_id or "-"),
            inert(reason),
            inert(letter.failed_at[:19].replace("T", " ")),
        )
    return table


def render_replay(report: ReplayReport) -> Table:
    verb = "dry run" if report.dry_run else "replay"
    counts = report.counts
    summary = ", ".join(f"{n} {result}" for result, n in sorted(counts.items())) or "nothing to do"
    marks = ", ".join(f"{p}:{o}" for p, o in sorted(report.marks.items()))
    table = Table(
        title=inert(f"dlq {verb} (group {report.group}): {summary}"),
        caption=inert(f"progress {'(unchanged by a dry run) ' if report.dry_run else ''}{marks}"),
        title_justify="left",
        caption_justify="left",
    )
    for column in ("dlq", "error class", "order_id", "result", "detail"):
        table.add_column(column, overflow="fold")
    for outcome in report.outcomes:
        if outcome.result == SKIPPED:
            continue
        style = (
            "green" if outcome.result == WRITTEN else ("red" if outcome.result == REFUSED else "")
        )
        table.add_row(
            outcome.letter.position,
            inert(outcome.letter.error_class),
            inert(outcome.order_id or "-"),
            Text(outcome.result, style=style),
            inert(outcome.detail[:REASON_WIDTH]),
        )
    return table
