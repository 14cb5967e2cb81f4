"""``foodpipe dlq list|replay`` read hostile dead letters without crashing or obeying them.

Issue 17's review dead-lettered messages a hostile producer can send, and each broke the
DLQ tools: a value nested 10,000 levels deep (``RecursionError``), Rich markup and
terminal escapes in an ``order_id`` (``MarkupError``, a link, raw ESC on the terminal),
and forged ``dlq-*`` headers (a fake ``dlq-value-truncated`` was honoured by replay).
"""

from __future__ import annotations

from foodpipe.replay import Replayer, Selection
from tests.unit.test_ops import letter

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
