"""How ``python -m foodpipe.bench.groups`` reads the members' logs, without services.

The timings are only as good as the moments this picks out of the JSON log lines: when
the group became balanced, when a crashed member's partitions were all owned again, how
many rebalance callbacks a member saw.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from foodpipe.bench import groups
from foodpipe.bench.groups import Member, _balanced, _callbacks_after, _covered_after, _owned

T = "orders"


def line(second: float, event: str, owned: list[int] | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"event": event, "ts": f"2026-12-01T10:00:{second:06.3f}Z"}
    if owned is not None:
        entry["owned"] = [f"{T}[{p}]" for p in owned]
    return entry


class LoggedMember(Member):
    """A Member whose log is given, not written by a process."""

    def __init__(self, name: str, events: list[dict[str, Any]]) -> None:
        super().__init__(name, {}, Path("."))
        self._events = events

    def events(self) -> list[dict[str, Any]]:
        return self._events


def test_owned_is_the_last_callbacks_view() -> None:
    events = [
        line(1, "joining the group"),
        line(2, "partitions assigned: ...", [0, 1, 2]),
        line(5, "partitions revoked: ...", [0, 1]),
        line(5, "partitions assigned: ...", [0, 1]),  # the consumer protocol's empty assign
    ]
    assert _owned(events) == {f"{T}[0]", f"{T}[1]"}
    assert _owned(events, until=_ts_of(3)) == {f"{T}[0]", f"{T}[1]", f"{T}[2]"}
    assert _callbacks_after(events, since=_ts_of(4)) == 2


def test_balanced_needs_every_member_owning_and_each_partition_once() -> None:
    first = LoggedMember("a", [line(2, "partitions assigned: ...", [0, 1, 2])])
    second = LoggedMember("b", [line(3, "joining the group")])
    assert _balanced([first, second]) is None  # b owns nothing yet
    first._events.append(line(6, "partitions revoked: ...", [0, 1]))
    assert _balanced([first, second]) is None  # partition 2 owned by nobody
    second._events.append(line(7.5, "partitions assigned: ...", [2]))
    assert _balanced([first, second]) == _ts_of(7.5)


def test_covered_after_a_kill_counts_only_later_callbacks() -> None:
    a = LoggedMember("a", [line(1, "partitions assigned: ...", [0])])
    b = LoggedMember("b", [line(1, "partitions assigned: ...", [1])])
    assert _covered_after([a, b], since=_ts_of(5)) is None  # partition 2 died with its owner
    b._events.append(line(16, "partitions assigned: ...", [1, 2]))
    assert _covered_after([a, b], since=_ts_of(5)) == _ts_of(16)


def test_the_markdown_names_both_protocols_and_every_row() -> None:
    entry = {"runs": [1.0], "median": 1.0, "min": 1.0, "max": 1.0, "spread_pct": 0.0}
    document = {
        "date": "2026-12-01T00:00:00+00:00",
        "runs": 1,
        "session_timeout_ms": 10_000,
        "conditions": {"cpu_count": 2},
        "results": {p: dict.fromkeys(groups.LABELS, entry) for p in groups.PROTOCOLS},
    }
    text = groups.render_markdown(json.loads(json.dumps(document)))
    assert "| classic (cooperative-sticky) | consumer (KIP-848, uniform) |" in text
    assert (
        sum(row.startswith("| ") for row in text.splitlines()) == len(groups.LABELS) + 2
    )  # + header, rule


def _ts_of(second: float) -> float:
    return groups._ts(line(second, "x"))
