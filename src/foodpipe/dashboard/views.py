"""What the dashboard sends to the browser, built from what the ops commands read.

Pure functions over :class:`foodpipe.commands.status.Snapshot` (the ``foodpipe status``
reading), :class:`foodpipe.replay.DeadLetter` (``foodpipe dlq list``) and
:class:`foodpipe.audit.AuditReport` (``foodpipe audit``): no I/O, so every number the
page shows is unit-tested without services.

Every document is JSON-ready. Error fields hold one readable line, never a traceback.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from foodpipe.audit import AuditReport
from foodpipe.commands.status import Snapshot, to_dict
from foodpipe.offsets import TopicState
from foodpipe.replay import DeadLetter

#: How many rebalances the page lists (the count covers all of them).
REBALANCES_KEPT = 10
#: How long a reason may be on the page; the full text is in ``foodpipe dlq list``.
REASON_CHARS = 200


def written_per_s(snapshot: Snapshot, previous: Snapshot | None) -> float | None:
    """Rows written per second between two readings (the growth of ``count(*)``)."""
    if previous is None:
        return None
    rows, before = snapshot.database.rows, previous.database.rows
    elapsed = snapshot.monotonic - previous.monotonic
    if rows is None or before is None or elapsed <= 0:
        return None
    return round(max(rows - before, 0) / elapsed, 1)


def assignment(topic: TopicState) -> dict[int, str]:
    """``{partition: owner}`` with owners as ``client@host#member`` (unowned left out)."""
    return {p.partition: p.owner.short for p in topic.partitions if p.owner is not None}


@dataclass(frozen=True)
class Rebalance:
    at: datetime
    members: tuple[str, ...]
    owners: dict[int, str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "members": list(self.members),
            "owners": {str(p): owner for p, owner in sorted(self.owners.items())},
        }


class RebalanceTracker:
    """Counts the rebalances the dashboard *sees*: changes of the partition assignment.

    Kafka keeps no history of rebalances, so this one starts with the dashboard and can
    miss a rebalance that begins and ends between two readings with the same result.
    """

    def __init__(self) -> None:
        self.count = 0
        self.events: deque[Rebalance] = deque(maxlen=REBALANCES_KEPT)
        self._last: dict[int, str] | None = None

    def observe(self, taken_at: datetime, topic: TopicState | None) -> None:
        if topic is None:  # Kafka did not answer: nothing is known, nothing changed
            return
        owners = assignment(topic)
        if self._last is not None and owners != self._last:
            self.count += 1
            members = tuple(sorted(member.short for member in topic.group.members))
            self.events.appendleft(Rebalance(taken_at, members, owners))
        self._last = owners

    def to_dict(self) -> dict[str, Any]:
        return {"seen": self.count, "latest": [event.to_dict() for event in self.events]}


def pipeline_document(
    snapshot: Snapshot,
    previous: Snapshot | None,
    *,
    latency: dict[str, Any],
    dead_letters: list[DeadLetter] | None,
    dead_letters_error: str | None,
    rebalances: RebalanceTracker,
) -> dict[str, Any]:
    """The pipeline view: ``foodpipe status --json`` plus what the page adds to it."""
    status = to_dict(snapshot, previous)
    owners: dict[str, str | None] = {}
    members: list[dict[str, Any]] = []
    if snapshot.topic is not None:
        topic = snapshot.topic
        owners = {str(p.partition): (p.owner.short if p.owner else None) for p in topic.partitions}
        members = [
            {
                "name": member.short,
                "partitions": sorted(p for name, p in member.partitions if name == topic.topic),
            }
            for member in topic.group.members
        ]
    return {
        "status": status,
        "owners": owners,
        "members": members,
        "kafka": {"ok": snapshot.kafka_error is None, "error": snapshot.kafka_error},
        "postgres": {"ok": snapshot.database.error is None, "error": snapshot.database.error},
        "written_per_s": written_per_s(snapshot, previous),
        "latency": latency,
        "rebalances": rebalances.to_dict(),
        "dead_letters": {
            "latest": [dead_letter_row(letter) for letter in dead_letters or []],
            "error": dead_letters_error,
        },
    }


def dead_letter_row(letter: DeadLetter) -> dict[str, Any]:
    reason = letter.reason
    if len(reason) > REASON_CHARS:
        reason = reason[: REASON_CHARS - 1] + "…"
    return {
        "position": letter.position,
        "origin": letter.origin,
        "error_class": letter.error_class,
        "order_id": letter.order_id,
        "reason": reason,
        "failed_at": letter.failed_at,
    }


def audit_document(
    report: AuditReport | None, *, error: str | None, started_at: datetime, seconds: float
) -> dict[str, Any]:
    """The latest audit: verdict, its checks, or the one line that says why it failed."""
    document: dict[str, Any] = {
        "started_at": started_at.isoformat(),
        "seconds": round(seconds, 1),
        "running": False,
        "verdict": None,
        "checks": [],
        "error": error,
    }
    if report is not None:
        document["verdict"] = "CONSISTENT" if report.ok else "INCONSISTENT"
        document["checks"] = [
            {
                "name": check.name,
                "result": "info" if check.informational else ("ok" if check.ok else "FAIL"),
                "kafka": check.kafka,
                "database": check.database,
                "detail": check.detail,
            }
            for check in report.checks
        ]
    return document
