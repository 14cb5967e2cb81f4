"""Reading and replaying the dead-letter topic (``foodpipe dlq list|replay``).

Replay sends dead-lettered messages back through the consumer's own validation
(:func:`foodpipe.consumer.decode.decode`) and its own idempotent write
(:class:`foodpipe.db.OrderWriter`). Nothing here has its own SQL or its own rules.

When does a replay write something that the consumer refused? When a rule has been
*relaxed* since:

- **a database rule**: a message dead-lettered as ``db_constraint`` because a CHECK
  constraint (or another table rule) refused the row is written once that rule has
  been dropped or changed by a migration. No option is needed: PostgreSQL decides.
- **a validation rule in the code**: after an upgrade that accepts more, replay
  re-validates with the new code and writes what now passes.
- **the key rules, by an operator's decision** (``--accept missing_key,key_mismatch``):
  the order itself is valid, only its Kafka key was missing or was not the
  ``customer_id``. The key decides the partition, not the content, so an operator may
  accept it. Schema and business rules can never be overridden: a message that breaks
  them is not an order.

Progress. Replay has a consumer group of its own on the DLQ topic
(``<KAFKA_CONSUMER_GROUP>-dlq-replay`` by default). Its committed offset per partition
is a low-water mark: every message below it has its order in PostgreSQL (written by a
replay, or already there). After each batch is committed to PostgreSQL, the mark moves
over the leading run of such messages and stops at the first one that is not (not
selected this time, still invalid, or still refused): a later replay starts there and
looks at it again. A second replay of the same messages therefore writes nothing,
twice over: the mark skips them, and the ``ON CONFLICT DO NOTHING`` write would
anyway. ``--from-start`` ignores the mark (safe, for the same reason).

Replay reads with ``assign()`` and only commits: it never joins a group, so it cannot
disturb the consumers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from pydantic import ValidationError
from sqlalchemy import Engine, select

from foodpipe.consumer.classify import ErrorClass
from foodpipe.consumer.decode import decode, order_id_of
from foodpipe.consumer.dlq import (
    HEADER_CONSUMER_GROUP,
    HEADER_ERROR_CLASS,
    HEADER_FAILED_AT,
    HEADER_ORIGINAL_OFFSET,
    HEADER_ORIGINAL_PARTITION,
    HEADER_ORIGINAL_TOPIC,
    HEADER_REASON,
    HEADER_VALUE_TRUNCATED,
    header_map,
)
from foodpipe.db import OrderWriter, orders
from foodpipe.errors import FatalError, PoisonMessage
from foodpipe.kafka import consumer_config
from foodpipe.models import Order
from foodpipe.offsets import KafkaView, read_range
from foodpipe.settings import Settings

#: Error classes an operator may accept on replay: the order is valid, only its key is not.
ACCEPTABLE = frozenset({ErrorClass.MISSING_KEY.value, ErrorClass.KEY_MISMATCH.value})

# Outcomes of one dead letter in a replay.
WRITTEN = "written"
STORED = "already stored"
INVALID = "still invalid"
REFUSED = "refused by PostgreSQL"
SKIPPED = "not selected"
WOULD_WRITE = "would write"
#: Outcomes that mean "its order is in PostgreSQL": the progress mark may pass them.
SETTLED = frozenset({WRITTEN, STORED})


def replay_group(settings: Settings) -> str:
    return f"{settings.kafka_consumer_group}-dlq-replay"


@dataclass(frozen=True)
class DeadLetter:
    """One message of the dead-letter topic with its ``dlq-*`` headers decoded."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    original_topic: str
    original_partition: int | None
    original_offset: int | None
    error_class: str
    reason: str
    failed_at: str
    group: str
    truncated: bool

    @classmethod
    def from_message(cls, message: Message) -> DeadLetter:
        raw = message.headers()
        headers = header_map(raw if isinstance(raw, list) else None)
        key, value = message.key(), message.value()
        return cls(
            partition=int(message.partition() or 0),
            offset=int(message.offset() or 0),
            key=key if isinstance(key, bytes) else None,
            value=value if isinstance(value, bytes) else None,
            original_topic=headers.get(HEADER_ORIGINAL_TOPIC, ""),
            original_partition=_int(headers.get(HEADER_ORIGINAL_PARTITION)),
            original_offset=_int(headers.get(HEADER_ORIGINAL_OFFSET)),
            error_class=headers.get(HEADER_ERROR_CLASS, ""),
            reason=headers.get(HEADER_REASON, ""),
            failed_at=headers.get(HEADER_FAILED_AT, ""),
            group=headers.get(HEADER_CONSUMER_GROUP, ""),
            truncated=HEADER_VALUE_TRUNCATED in headers,
        )

    @property
    def position(self) -> str:
        return f"{self.partition}:{self.offset}"

    @property
    def origin(self) -> str:
        return f"{self.original_topic}[{self.original_partition}]@{self.original_offset}"

    @property
    def order_id(self) -> str | None:
        """The ``order_id`` in the value, if the value is a JSON object that has one."""
        if self.truncated:
            return None
        return order_id_of(self.value)

    def to_dict(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "offset": self.offset,
            "original_topic": self.original_topic,
            "original_partition": self.original_partition,
            "original_offset": self.original_offset,
            "error_class": self.error_class,
            "reason": self.reason,
            "failed_at": self.failed_at,
            "consumer_group": self.group,
            "order_id": self.order_id,
            "value_truncated": self.truncated,
            "value_bytes": len(self.value or b""),
        }


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class Selection:
    """Which dead letters to list or replay. Empty criteria select everything."""

    error_classes: frozenset[str] = frozenset()
    reason: str | None = None
    partition: int | None = None
    first_offset: int | None = None
    last_offset: int | None = None

    def matches(self, letter: DeadLetter) -> bool:
        if self.error_classes and letter.error_class not in self.error_classes:
            return False
        if self.reason is not None and self.reason.lower() not in letter.reason.lower():
            return False
        if self.partition is not None and letter.partition != self.partition:
            return False
        if self.first_offset is not None and letter.offset < self.first_offset:
            return False
        return self.last_offset is None or letter.offset <= self.last_offset


def parse_offset_range(text: str) -> tuple[int | None, int | None]:
    """``"START-END"`` (both included), ``"START-"`` or ``"-END"``; raises ``ValueError``."""
    start, sep, end = text.partition("-")
    if not sep:
        raise ValueError(f"'{text}' is not START-END (e.g. 10-20, 10- or -20)")
    try:
        first = int(start) if start.strip() else None
        last = int(end) if end.strip() else None
    except ValueError:
        raise ValueError(f"'{text}' is not START-END with whole numbers (e.g. 10-20)") from None
    if first is None and last is None:
        raise ValueError("an offset range needs a start, an end or both (e.g. 10-20)")
    if first is not None and last is not None and first > last:
        raise ValueError(f"offset range {text}: the start is after the end")
    if (first is not None and first < 0) or (last is not None and last < 0):
        raise ValueError(f"offset range {text}: offsets are 0 or more")
    return first, last


def read_dead_letters(
    settings: Settings,
    view: KafkaView,
    starts: dict[int, int] | None = None,
    timeout_s: float = 120.0,
) -> Iterator[DeadLetter]:
    """Every dead letter from ``starts`` (default: the log start) to the current log end."""
    topic = settings.kafka_dlq_topic
    marks = view.watermarks(topic, view.partitions(topic))
    ranges = {p: (max(low, (starts or {}).get(p, low)), high) for p, (low, high) in marks.items()}
    for message in read_range(settings, topic, ranges, timeout_s):
        yield DeadLetter.from_message(message)


def latest_dead_letters(
    settings: Settings, view: KafkaView, limit: int, timeout_s: float = 30.0
) -> list[DeadLetter]:
    """The ``limit`` newest dead letters (by failure time), reading only the tail.

    Each partition is read from ``limit`` before its log end, so the cost stays the same
    however long the topic grows (``foodpipe dashboard`` asks whenever the DLQ grows).
    """
    marks = view.watermarks(settings.kafka_dlq_topic, view.partitions(settings.kafka_dlq_topic))
    starts = {p: max(low, high - limit) for p, (low, high) in marks.items()}
    letters = list(read_dead_letters(settings, view, starts, timeout_s))
    letters.sort(key=lambda letter: (letter.failed_at, letter.partition, letter.offset))
    return letters[-limit:][::-1]


# ------------------------------------------------------------------------------ replay


@dataclass
class Outcome:
    letter: DeadLetter
    result: str
    detail: str = ""
    order_id: str | None = None
    #: The validated order, for outcomes that can be written.
    order: Order | None = None


@dataclass
class ReplayReport:
    group: str
    dry_run: bool
    starts: dict[int, int] = field(default_factory=dict)
    marks: dict[int, int] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)
    conflicts: int = 0

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(outcome.result for outcome in self.outcomes))

    @property
    def written(self) -> int:
        return self.counts.get(WRITTEN, 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "dry_run": self.dry_run,
            "started_at": {str(p): o for p, o in sorted(self.starts.items())},
            "committed": {str(p): o for p, o in sorted(self.marks.items())},
            "counts": self.counts,
            "conflicts": self.conflicts,
            "messages": [
                {
                    **outcome.letter.to_dict(),
                    "result": outcome.result,
                    "detail": outcome.detail,
                }
                for outcome in self.outcomes
            ],
        }


def revalidate(letter: DeadLetter, accept: Iterable[str] = ()) -> Order | PoisonMessage:
    """The consumer's validation, with the key rules relaxed if ``accept`` says so."""
    try:
        return decode(letter.key, letter.value)
    except PoisonMessage as poison:
        if poison.error_class not in set(accept) or poison.error_class not in ACCEPTABLE:
            return poison
    try:
        # Only the key was wrong: the content passed the same model a moment ago.
        return Order.model_validate_json(letter.value or b"")
    except ValidationError:  # pragma: no cover - decode validated this very value
        return PoisonMessage(ErrorClass.SCHEMA_VIOLATION, "the value is not a valid order")


class Replayer:
    """Replays a selection of the DLQ through validation into PostgreSQL."""

    def __init__(
        self,
        settings: Settings,
        view: KafkaView,
        engine: Engine,
        *,
        group: str | None = None,
        batch_size: int | None = None,
        timeout_s: float = 120.0,
    ) -> None:
        self.settings = settings
        self.view = view
        self.engine = engine
        self.group = group or replay_group(settings)
        self.batch_size = batch_size or settings.batch_size
        self.timeout_s = timeout_s

    def run(
        self,
        selection: Selection,
        *,
        accept: Iterable[str] = (),
        dry_run: bool = False,
        from_start: bool = False,
    ) -> ReplayReport:
        topic = self.settings.kafka_dlq_topic
        partitions = self.view.partitions(topic)
        report = ReplayReport(self.group, dry_run)
        committed = self.view.committed(self.group, topic, partitions)
        marks = self.view.watermarks(topic, partitions)
        report.starts = {
            p: low if from_start or committed.get(p) is None else max(committed[p] or 0, low)
            for p, (low, _high) in marks.items()
        }
        report.marks = dict(report.starts)
        accepted = frozenset(accept)
        committer = None if dry_run else self._committer()
        blocked: set[int] = set()
        try:
            chunk: list[Outcome] = []
            for letter in read_dead_letters(
                self.settings, self.view, report.starts, self.timeout_s
            ):
                chunk.append(self._judge(letter, selection, accepted))
                if len(chunk) >= self.batch_size:
                    self._settle(chunk, report, blocked, committer, dry_run)
                    chunk = []
            self._settle(chunk, report, blocked, committer, dry_run)
        finally:
            if committer is not None:
                committer.close()
        return report

    def _judge(self, letter: DeadLetter, selection: Selection, accept: frozenset[str]) -> Outcome:
        if not selection.matches(letter):
            return Outcome(letter, SKIPPED, order_id=letter.order_id)
        checked = revalidate(letter, accept)
        if isinstance(checked, PoisonMessage):
            return Outcome(
                letter,
                INVALID,
                f"{checked.error_class}: {checked.reason}",
                order_id=letter.order_id,
            )
        return Outcome(letter, WOULD_WRITE, order_id=checked.order_id, order=checked)

    def _settle(
        self,
        chunk: list[Outcome],
        report: ReplayReport,
        blocked: set[int],
        committer: Consumer | None,
        dry_run: bool,
    ) -> None:
        if not chunk:
            return
        pending = [o for o in chunk if o.result == WOULD_WRITE]
        if pending:
            if dry_run:
                self._predict(pending)
            else:
                self._write(pending, report)
        report.outcomes.extend(chunk)
        # Move each partition's mark over the leading run of settled messages.
        moved: dict[int, int] = {}
        for outcome in sorted(chunk, key=lambda o: (o.letter.partition, o.letter.offset)):
            partition = outcome.letter.partition
            if partition in blocked:
                continue
            if outcome.result in SETTLED:
                moved[partition] = outcome.letter.offset + 1
            else:
                blocked.add(partition)
        if not moved:
            return
        report.marks.update(moved)
        if committer is not None:
            offsets = [
                TopicPartition(self.settings.kafka_dlq_topic, p, o) for p, o in moved.items()
            ]
            try:
                committer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                error = exc.args[0] if exc.args else exc
                detail = error.str() if isinstance(error, KafkaError) else str(error)
                raise FatalError(
                    f"the rows are written, but the replay progress of group {self.group}"
                    f" could not be committed ({detail}); running replay again is safe"
                ) from None

    def _write(self, pending: list[Outcome], report: ReplayReport) -> None:
        result = OrderWriter(self.engine).write([o.order for o in pending if o.order])
        for index in result.inserted:
            pending[index].result = WRITTEN
        for index in result.duplicates:
            pending[index].result = STORED
        for index, reason in result.rejected.items():
            pending[index].result = REFUSED
            pending[index].detail = reason
        report.conflicts += len(result.conflicts)
        for conflict in result.conflicts:
            pending[conflict.index].detail = (
                "stored with a different payload (the stored row was kept): "
                + ", ".join(conflict.fields)
            )

    def _predict(self, pending: list[Outcome]) -> None:
        ids = [o.order_id for o in pending if o.order_id]
        with self.engine.connect() as conn:
            stored = set(
                conn.execute(select(orders.c.order_id).where(orders.c.order_id.in_(ids))).scalars()
            )
        seen: set[str] = set()
        for outcome in pending:
            if outcome.order_id in stored or outcome.order_id in seen:
                outcome.result = STORED
            else:
                outcome.detail = "unless PostgreSQL still refuses the row"
                seen.add(outcome.order_id or "")

    def _committer(self) -> Consumer:
        """A consumer that only commits the replay group's offsets (never joins the group)."""
        return Consumer(
            consumer_config(
                self.settings, **{"group.id": self.group, "client.id": "foodpipe-dlq-replay"}
            )
        )
