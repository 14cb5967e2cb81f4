"""The check every fault test ends with (docs: ../shared/notes/reliability.md, "The check").

Ground truth comes from outside the consumer:

- the **acknowledged** orders: what the producer's delivery reports confirmed (the
  ``order delivered`` lines of ``foodpipe produce`` at DEBUG, with partition and
  offset), plus what the test itself produced and saw confirmed;
- the **invalid** positions: the (partition, offset) of every message the test sent
  knowing it is not a valid order (the poison corpus), or that the database must
  refuse, with the ``dlq-error-class`` it must get;
- the topic itself, read back from the beginning, so that an order on the log that
  nobody acknowledged (a producer give-up that did land) is seen, not guessed.

The checks (each failure names what differs, with examples):

1. ``set(order_id in orders) == valid ids acknowledged`` (and == the valid ids on the
   topic: nothing on the log that was not acknowledged, unless the case allows it);
2. ``SELECT order_id ... HAVING count(*) > 1`` is empty;
3. the DLQ holds exactly the invalid positions, each with the original topic,
   partition, offset, a reason and the expected error class; repeats are redeliveries;
4. committed offsets == log-end offsets for every partition (lag 0);
5. the committed offsets sampled during the case never moved backwards;
6. redeliveries are counted (rows the idempotent insert absorbed, from the write log
   the harness installs; dead letters written twice), reported, never failed on.

``foodpipe audit`` (src/foodpipe/audit.py) checks the same invariant from Kafka and the
table alone, classifying messages with the consumer's own validation, for operators.
This module is stricter because a test knows what it sent: the acknowledged set from
delivery reports, the exact poison positions and classes, and the offset history. Both
run at the end of each case (``Fault.finish``), so each checks the other.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from sqlalchemy import Engine, text

from foodpipe.consumer.dlq import header_map
from tests.support import wait_until

Position = tuple[int, int]  # (partition, offset)

#: How many examples a failed check lists.
SAMPLE = 10


# --------------------------------------------------------------------------- reading Kafka


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, str | bytes | None]]


def partitions_of(bootstrap: str, topic: str) -> list[int]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    metadata = admin.list_topics(topic, timeout=15)
    return sorted(metadata.topics[topic].partitions)


def end_offsets(bootstrap: str, topic: str, timeout: float = 60.0) -> dict[int, int]:
    """Log-end offset per partition; retried while a restarted broker takes up leadership.

    A fresh client per attempt: one created while the partitions had no leader can keep
    answering "unknown partition" from its own metadata cache.
    """
    found: dict[int, int] = {}
    last_error: list[str] = []

    def read() -> bool:
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "fault-offsets-reader"})
        try:
            for p in partitions_of(bootstrap, topic):
                found[p] = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1]
        except KafkaException as exc:  # NOT_LEADER / LEADER_NOT_AVAILABLE just after a bounce
            last_error[:] = [str(exc)]
            return False
        finally:
            consumer.close()
        return True

    wait_until(
        read,
        timeout=timeout,
        interval=0.2,
        message=lambda: f"log-end offsets of {topic} ({last_error})",
    )
    return found


def read_topic(
    bootstrap: str, topic: str, *, keep_values: bool = True, timeout: float = 120.0
) -> list[Record]:
    """Every message of ``topic`` from its start to the log end as of now."""
    ends = end_offsets(bootstrap, topic)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "fault-topic-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            # A near-limit poison message must come through whole.
            "fetch.max.bytes": 8 * 1024 * 1024,
            "max.partition.fetch.bytes": 4 * 1024 * 1024,
        }
    )
    records: list[Record] = []
    positions = dict.fromkeys(ends, 0)
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])

        def done() -> bool:
            for message in consumer.consume(num_messages=5000, timeout=0.5):
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise AssertionError(f"reading {topic}: {error.str()}")
                partition, offset = int(message.partition() or 0), int(message.offset() or 0)
                positions[partition] = offset + 1
                raw = message.headers() or []
                raw_headers = list(raw.items()) if isinstance(raw, dict) else list(raw)
                records.append(
                    Record(
                        partition,
                        offset,
                        message.key(),
                        message.value() if keep_values else None,
                        raw_headers,
                    )
                )
            return all(positions[p] >= end for p, end in ends.items())

        wait_until(
            done,
            timeout=timeout,
            interval=0,
            message=lambda: f"{topic} read to its end {ends} (at {positions})",
        )
    finally:
        consumer.close()
    return records


#: OffsetFetch errors that mean "the group's coordinator is moving or busy", not "wrong".
_COORDINATOR_MOVING = frozenset(
    {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
    }
)


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition of ``topic`` (missing: none committed)."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        committed = consumer.committed(
            [TopicPartition(topic, p) for p in partitions_of(bootstrap, topic)], timeout=15
        )
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in committed if tp.offset is not None and tp.offset >= 0}


def order_id_of(value: bytes | None) -> str | None:
    if not value:
        return None
    try:
        data: Any = json.loads(value)
    except (ValueError, RecursionError):  # hostile input: deeply nested JSON
        return None
    order_id = data.get("order_id") if isinstance(data, dict) else None
    return order_id if isinstance(order_id, str) else None


# --------------------------------------------------------------------------- the write log

WRITE_LOG_SQL = """
CREATE TABLE IF NOT EXISTS fault_write_log (
    order_id text NOT NULL,
    written_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE OR REPLACE FUNCTION fault_log_write() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
BEGIN
    INSERT INTO fault_write_log (order_id) VALUES (NEW.order_id);
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS fault_write_log ON orders;
CREATE TRIGGER fault_write_log BEFORE INSERT ON orders
    FOR EACH ROW EXECUTE FUNCTION fault_log_write();
"""


def install_write_log(admin_engine: Engine) -> None:
    """Log every row a *committed* transaction offered to ``INSERT INTO orders``.

    A BEFORE INSERT row trigger fires for each proposed row, including the ones
    ``ON CONFLICT DO NOTHING`` then skips, and its log row commits or rolls back with
    the consumer's transaction (or savepoint). So ``count(*) - count(DISTINCT order_id)``
    is the number of orders written again after their first write committed: the
    redeliveries the idempotent insert absorbed. Test instrumentation only: the trigger
    is SECURITY DEFINER, the app role gains no privilege.
    """
    with admin_engine.begin() as conn:
        conn.exec_driver_sql(WRITE_LOG_SQL)


def write_log_counts(admin_engine: Engine) -> tuple[int, int]:
    """(rows offered by committed transactions, distinct order ids among them)."""
    with admin_engine.connect() as conn:
        row = conn.execute(
            text("SELECT count(*), count(DISTINCT order_id) FROM fault_write_log")
        ).one()
    return int(row[0]), int(row[1])


# --------------------------------------------------------------------------- the report


@dataclass
class InvariantReport:
    """What the check found; the numbers go into the suite's summary table."""

    messages: int = 0
    valid_messages: int = 0
    distinct_valid: int = 0
    invalid_sent: int = 0
    acknowledged: int = 0
    rows: int = 0
    dlq_records: int = 0
    dlq_repeats: int = 0
    producer_repeats: int = 0
    rewritten: int = 0
    offset_samples: int = 0
    committed: dict[int, int] = field(default_factory=dict)

    @property
    def redeliveries(self) -> int:
        """Messages processed again after their first processing committed.

        Rows offered again to the idempotent insert, less the producer's own repeats
        (an order sent twice is written twice without any redelivery), plus dead letters
        written twice.
        """
        return max(0, self.rewritten - self.producer_repeats) + self.dlq_repeats


def _sample(items: Iterable[Any]) -> list[Any]:
    return sorted(items, key=repr)[:SAMPLE]


def assert_monotonic(samples: Sequence[Mapping[int, int]]) -> None:
    """Committed offsets only ever moved forward, per partition."""
    last: dict[int, int] = {}
    for index, sample in enumerate(samples):
        for partition, offset in sample.items():
            before = last.get(partition)
            assert before is None or offset >= before, (
                f"committed offset of partition {partition} moved backwards: {before} -> "
                f"{offset} (sample {index} of {len(samples)})"
            )
            last[partition] = offset


def check_invariants(
    *,
    bootstrap: str,
    topic: str,
    dlq_topic: str,
    group: str,
    admin_engine: Engine,
    acknowledged: Mapping[str, Position | None],
    invalid: Mapping[Position, str | None] | None = None,
    offset_samples: Sequence[Mapping[int, int]] = (),
    allow_unacknowledged: bool = False,
    lag_timeout: float = 60.0,
) -> InvariantReport:
    """Run every check; raise ``AssertionError`` naming the first that fails."""
    invalid = dict(invalid or {})
    # An acknowledged order the database must refuse (case 12) is expected in the DLQ,
    # not in the table: it is one of the invalid positions.
    acknowledged = {
        order_id: position
        for order_id, position in acknowledged.items()
        if position is None or position not in invalid
    }
    report = InvariantReport(invalid_sent=len(invalid), acknowledged=len(acknowledged))

    # 4. lag 0 first: the rest is only meaningful once the consumer has caught up.
    ends = end_offsets(bootstrap, topic)

    unanswered: list[str] = []

    def caught_up() -> bool:
        try:
            report.committed = committed_offsets(bootstrap, group, topic)
        except KafkaException as exc:
            # The group's coordinator may still be moving after a fault (network case 4:
            # NOT_COORDINATOR right after the quorum was healed): no answer yet, ask again
            # until the deadline. Any other error is a verdict.
            error = exc.args[0] if exc.args else None
            if not isinstance(error, KafkaError) or error.code() not in _COORDINATOR_MOVING:
                raise
            unanswered.append(error.str())
            return False
        return all(report.committed.get(p, 0) >= end for p, end in ends.items())

    wait_until(
        caught_up,
        timeout=lag_timeout,
        interval=0.2,
        message=lambda: (
            f"lag 0: committed {report.committed} == log end {ends}"
            + (f" (last OffsetFetch error: {unanswered[-1]})" if unanswered else "")
        ),
    )
    assert report.committed == {p: end for p, end in ends.items() if end > 0}, (
        f"committed offsets {report.committed} differ from the log end {ends}"
    )

    # The topic, read back: valid ids (by position) and producer repeats.
    records = read_topic(bootstrap, topic, keep_values=True)
    report.messages = len(records)
    on_log = {(r.partition, r.offset) for r in records}
    missing_invalid = set(invalid) - on_log
    assert not missing_invalid, f"invalid positions not on the topic: {_sample(missing_invalid)}"
    valid_ids: Counter[str] = Counter()
    unparsable = []
    for r in records:
        if (r.partition, r.offset) in invalid:
            continue
        order_id = order_id_of(r.value)
        if order_id is None:
            unparsable.append((r.partition, r.offset))
        else:
            valid_ids[order_id] += 1
    assert not unparsable, f"messages neither valid nor expected invalid: {_sample(unparsable)}"
    report.valid_messages = sum(valid_ids.values())
    report.distinct_valid = len(valid_ids)
    report.producer_repeats = report.valid_messages - report.distinct_valid

    # Every acknowledged order is on the log (at the position the broker confirmed).
    acked = set(acknowledged)
    not_on_log = acked - set(valid_ids)
    assert not not_on_log, f"acknowledged but not on the topic: {_sample(not_on_log)}"
    wrong_place = [
        (order_id, position)
        for order_id, position in acknowledged.items()
        if position is not None and position not in on_log
    ]
    assert not wrong_place, f"acknowledged at positions not on the topic: {_sample(wrong_place)}"
    unacked = set(valid_ids) - acked
    if not allow_unacknowledged:
        assert not unacked, f"on the topic but never acknowledged: {_sample(unacked)}"

    # 1. The table holds exactly the valid orders: every acknowledged one, nothing else.
    with admin_engine.connect() as conn:
        stored = list(conn.execute(text("SELECT order_id FROM orders")).scalars())
        # 2. No duplicate rows (the primary key forbids them; checked anyway).
        duplicates = list(
            conn.execute(
                text("SELECT order_id FROM orders GROUP BY order_id HAVING count(*) > 1")
            ).scalars()
        )
    report.rows = len(stored)
    stored_set = set(stored)
    assert not duplicates, f"duplicate rows: {_sample(duplicates)}"
    lost = acked - stored_set
    assert not lost, f"{len(lost)} acknowledged orders missing from the table: {_sample(lost)}"
    expected = set(valid_ids) if allow_unacknowledged else acked
    extra = stored_set - expected
    assert not extra, f"{len(extra)} rows no valid message explains: {_sample(extra)}"
    assert stored_set == expected

    # 3. The DLQ holds exactly the invalid messages, with the headers that locate them.
    dead = read_topic(bootstrap, dlq_topic, keep_values=False)
    report.dlq_records = len(dead)
    seen: Counter[Position] = Counter()
    problems = []
    for record in dead:
        headers = header_map(record.headers)
        try:
            position = (
                int(headers["dlq-original-partition"]),
                int(headers["dlq-original-offset"]),
            )
        except (KeyError, ValueError):
            problems.append(f"dead letter without original position: {headers}")
            continue
        seen[position] += 1
        if headers.get("dlq-original-topic") != topic:
            problems.append(f"{position}: original topic {headers.get('dlq-original-topic')}")
        if not headers.get("dlq-reason"):
            problems.append(f"{position}: no reason")
        if position not in invalid:
            problems.append(f"{position}: dead-lettered but valid ({headers})")
        elif invalid[position] is not None and headers.get("dlq-error-class") != invalid[position]:
            problems.append(
                f"{position}: error class {headers.get('dlq-error-class')},"
                f" expected {invalid[position]}"
            )
    assert not problems, f"dead-letter problems: {problems[:SAMPLE]}"
    undead = set(invalid) - set(seen)
    assert not undead, f"{len(undead)} invalid messages not in the DLQ: {_sample(undead)}"
    report.dlq_repeats = sum(seen.values()) - len(seen)

    # 5. Offsets only moved forward.
    assert_monotonic(offset_samples)
    report.offset_samples = len(offset_samples)

    # 6. Redeliveries, counted (not failed on).
    try:
        offered, distinct = write_log_counts(admin_engine)
    except Exception:  # no write log installed in this case
        offered = distinct = 0
    report.rewritten = offered - distinct
    return report


def wait_rows(admin_engine: Engine, expected: int, timeout: float) -> float:
    """Wait until the table has ``expected`` rows; returns the seconds it took."""
    started = time.monotonic()

    def count() -> int:
        with admin_engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM orders")).scalar_one())

    wait_until(
        lambda: count() >= expected,
        timeout=timeout,
        interval=0.2,
        message=lambda: f"{expected} rows (have {count()})",
    )
    return time.monotonic() - started
