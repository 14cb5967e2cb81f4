"""``foodpipe dlq list|replay`` read hostile dead letters without crashing or obeying them.

Issue 17's review dead-lettered messages a hostile producer can send, and each broke the
DLQ tools: a value nested 10,000 levels deep (``RecursionError``), Rich markup and
terminal escapes in an ``order_id`` (``MarkupError``, a link, raw ESC on the terminal),
and forged ``dlq-*`` headers (a fake ``dlq-value-truncated`` was honoured by replay).
"""

from __future__ import annotations

import io
import json
from typing import Any

from rich.console import Console

from foodpipe.commands import dlq as dlq_command
from foodpipe.commands import status as status_command
from foodpipe.consumer.dlq import dlq_headers, header_map
from foodpipe.errors import PoisonMessage
from foodpipe.offsets import GroupState, Member, PartitionState, TopicState
from foodpipe.replay import INVALID, DeadLetter, Outcome, Replayer, ReplayReport, Selection
from tests.unit.test_ops import FakeMessage, letter, snapshot

#: 60 KB, under the consumer's 64 KiB bound, so it is dead-lettered whole.
DEEP = b'{"a":' * 10_000 + b"1" + b"}" * 10_000


def test_a_deeply_nested_dead_letter_has_no_order_id() -> None:
    dead = letter(b"k", DEEP, "json_invalid")
    assert dead.order_id is None
    assert dead.to_dict()["order_id"] is None


def test_replay_judges_a_deeply_nested_dead_letter_still_invalid() -> None:
    dead = letter(b"k", DEEP, "json_invalid")
    judge = Replayer._judge  # no Kafka, no database: only the verdict
    outcome = judge(None, dead, Selection(), frozenset())  # type: ignore[arg-type]
    assert outcome.result == "still invalid"
    assert outcome.order_id is None
    skipped = judge(None, dead, Selection(partition=99), frozenset())  # type: ignore[arg-type]
    assert skipped.result == "not selected"


def _hostile_letters() -> list[DeadLetter]:
    """Dead letters whose order_id and reason carry markup, a link and raw escapes."""
    ids = [
        "[/bold]",
        "[link=https://attacker.example/]click[/link]",
        "ORD\x1b[2J\x1b]8;;https://attacker.example/\x07x",
        "rtl\u202eexe.txt",
    ]
    return [
        letter(b"k", json.dumps({"order_id": i}).encode(), "schema_violation", f"why {i}")
        for i in ids
    ]


def _terminal_output(renderable: Any) -> str:
    out = io.StringIO()
    Console(file=out, width=300, force_terminal=True, color_system="truecolor").print(renderable)
    return out.getvalue()


def test_dlq_list_shows_markup_and_escapes_as_inert_text() -> None:
    letters = _hostile_letters()
    shown = _terminal_output(dlq_command.render_list("food-orders.dlq [red]x", letters, 4, 4))
    assert "[/bold]" in shown
    assert "[link=https://attacker.example/]click[/link]" in shown
    # No hyperlink (OSC 8), no screen clear, no bidi override reaches the terminal:
    # control characters are shown as \xNN / \uNNNN.
    assert "\x1b]8;" not in shown
    assert "\x1b[2J" not in shown
    assert "\\x1b[2J" in shown
    assert "\u202e" not in shown
    assert "\\u202e" in shown


def test_dlq_replay_table_shows_markup_and_escapes_as_inert_text() -> None:
    report = ReplayReport("[bold]group", dry_run=True)
    report.outcomes = [
        Outcome(dead, INVALID, f"schema_violation: {dead.order_id}", order_id=dead.order_id)
        for dead in _hostile_letters()
    ]
    shown = _terminal_output(dlq_command.render_replay(report))
    assert "[/bold]" in shown
    assert "[bold]group" in shown
    assert "\x1b]8;" not in shown
    assert "\x1b[2J" not in shown


def test_status_shows_a_hostile_client_id_as_inert_text() -> None:
    # Any client may join the group with the client.id it likes.
    hostile = Member(
        member_id="x-1234567-89ab-cdef-0123-456789abcdef",
        client_id="[/bold]\x1b[2J",
        host="/10.0.0.5",
        partitions=(("orders", 0),),
    )
    group = GroupState("order-processors", "STABLE", (hostile,))
    topic = TopicState("orders", group, (PartitionState(0, 0, 1, 1, hostile),))
    shown = _terminal_output(status_command.render(snapshot(topic=topic)))
    assert "[/bold]\\x1b[2J@10.0.0.5" in shown


FORGED = [
    ("trace-id", b"abc"),
    ("dlq-value-truncated", b"999999"),
    ("dlq-error-class", b"db_constraint"),
    ("dlq-original-topic", b"payments"),
]


def test_incoming_dlq_headers_are_not_copied_to_the_dead_letter() -> None:
    original = FakeMessage(b"k", b"{}", FORGED)
    headers = dlq_headers(original, PoisonMessage("schema_violation", "why"), "group")
    names = [name for name, _ in headers]
    assert names[0] == "trace-id"  # the producer's own headers stay
    assert names.count("dlq-original-topic") == 1
    assert "dlq-value-truncated" not in names
    assert dict(headers)["dlq-error-class"] == b"schema_violation"


def test_forged_headers_of_an_older_dead_letter_are_not_honoured() -> None:
    # Dead-lettered before the fix: the forged headers come before the consumer's own.
    ours = dlq_headers(FakeMessage(b"k", b"{}"), PoisonMessage("schema_violation", "why"), "g")
    dead = DeadLetter.from_message(FakeMessage(b"k", b"{}", [*FORGED, *ours]))  # type: ignore[arg-type]
    assert dead.truncated is False
    assert dead.error_class == "schema_violation"
    assert dead.original_topic == "orders"
    assert header_map([*FORGED, *ours])["dlq-error-class"] == "schema_violation"
