"""The operations commands' pure parts: audit verdicts, DLQ filters and replay
validation, the status document and tables. No services needed."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from rich.console import Console

from foodpipe.audit import AuditReport, PartitionAudit, build_checks
from foodpipe.commands import audit as audit_command
from foodpipe.commands import dlq as dlq_command
from foodpipe.commands import status as status_command
from foodpipe.consumer.dlq import dlq_headers
from foodpipe.errors import PoisonMessage
from foodpipe.models import Order
from foodpipe.offsets import GroupState, Member, PartitionState, TopicState
from foodpipe.replay import (
    INVALID,
    SKIPPED,
    WRITTEN,
    DeadLetter,
    Outcome,
    ReplayReport,
    Selection,
    parse_offset_range,
    revalidate,
)
from tests.poison import POISON, order_dict, record, valid_order


def text_of(renderable: Any) -> str:
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(renderable)
    return out.getvalue()


# ------------------------------------------------------------------------- audit


def clean_report(**changes: Any) -> AuditReport:
    report = AuditReport("orders", "orders.dlq", "group")
    report.partitions = [PartitionAudit(p, 0, 10, 10, 9, 1) for p in range(3)]
    report.messages, report.valid_messages, report.invalid_messages = 30, 27, 3
    report.distinct_orders = report.rows = report.distinct_rows = 27
    report.dlq_records = report.dlq_messages = 3
    for name, value in changes.items():
        setattr(report, name, value)
    return report


def verdicts(report: AuditReport) -> dict[str, bool]:
    return {check.name: check.ok for check in build_checks(report)}


def test_a_clean_report_passes_every_check() -> None:
    report = clean_report()
    assert report.ok
    assert report.lag == 0
    assert all(verdicts(report).values())
    assert report.to_dict()["ok"] is True


@pytest.mark.parametrize(
    ("changes", "failing"),
    [
        ({"lost": ["ORD-20250110-00001"]}, "loss"),
        ({"pending": ["ORD-20250110-00001"]}, "pending"),
        ({"extra": ["ORD-20250110-00009"]}, "extra rows"),
        ({"duplicate_rows": ["ORD-20250110-00001"]}, "duplicate rows"),
        ({"undead": ["0@4"]}, "dead letters"),
        ({"unexplained_dead": ["1@2"]}, "dead letters"),
        ({"partitions": [PartitionAudit(0, 0, 10, 7, 10, 0)]}, "lag"),
    ],
)
def test_each_inconsistency_fails_its_check(changes: dict[str, Any], failing: str) -> None:
    report = clean_report(**changes)
    assert not report.ok
    assert [name for name, ok in verdicts(report).items() if not ok] == [failing]


def test_allow_lag_accepts_pending_and_lag_but_never_loss() -> None:
    lagging = clean_report(
        pending=["ORD-20250110-00002"],
        partitions=[PartitionAudit(0, 0, 10, 7, 10, 0)],
        allow_lag=True,
    )
    assert lagging.ok
    assert not clean_report(lost=["ORD-20250110-00001"], allow_lag=True).ok


def test_retention_explains_extra_rows_and_missing_dead_letters() -> None:
    assert clean_report(extra=["ORD-20250110-00009"], truncated=True).ok
    assert clean_report(undead=["0@0"], dlq_truncated=True).ok


def test_redeliveries_are_reported_not_failed() -> None:
    report = clean_report(producer_repeats=4, dlq_repeats=2, recovered=1)
    assert report.ok
    (redelivery,) = [c for c in build_checks(report) if c.name == "redeliveries"]
    assert redelivery.informational
    assert redelivery.count == 6


def test_audit_table_names_the_missing_orders() -> None:
    ids = [f"ORD-20250110-{n:05d}" for n in range(1, 26)]
    table = text_of(audit_command.render(clean_report(lost=ids)))
    assert "INCONSISTENT" in table
    assert "ORD-20250110-00001" in table
    assert "..." in table  # only a sample of 20 is listed
    assert "CONSISTENT" in text_of(audit_command.render(clean_report()))
    document = clean_report(lost=ids).to_dict()
    assert document["lost"] == 25
    (loss,) = [c for c in document["checks"] if c["name"] == "loss"]
    assert len(loss["sample"]) == 20


# ------------------------------------------------------------------------- DLQ


class FakeMessage:
    def __init__(
        self,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int = 1,
        offset: int = 7,
    ) -> None:
        self._key, self._value, self._headers = key, value, headers
        self._partition, self._offset = partition, offset

    def topic(self) -> str:
        return "orders"

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)

    def error(self) -> None:
        return None


def letter(
    key: bytes | None, value: bytes | None, error_class: str, reason: str = "why", **kw: Any
) -> DeadLetter:
    original = FakeMessage(key, value, partition=2, offset=41)
    headers = dlq_headers(original, PoisonMessage(error_class, reason), "group")
    return DeadLetter.from_message(FakeMessage(key, value, headers, **kw))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("10-20", (10, 20)), ("10-", (10, None)), ("-20", (None, 20)), ("5-5", (5, 5))],
)
def test_offset_ranges(text: str, expected: tuple[int | None, int | None]) -> None:
    assert parse_offset_range(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("20-10", "start is after the end"),
        ("10", "is not START-END"),
        ("a-b", "whole numbers"),
        ("-", "needs a start, an end or both"),
    ],
)
def test_bad_offset_ranges_say_why(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_offset_range(text)


def test_a_dead_letter_carries_its_origin_and_reason() -> None:
    order = valid_order(5)
    dead = letter(*record(order), "db_constraint", "refused", partition=0, offset=3)
    assert dead.position == "0:3"
    assert dead.origin == "orders[2]@41"
    assert dead.error_class == "db_constraint"
    assert dead.reason == "refused"
    assert dead.group == "group"
    assert dead.order_id == order.order_id
    assert dead.to_dict()["original_offset"] == 41
    assert letter(b"k", b"not json", "json_invalid").order_id is None
    assert letter(b"k", b"[1]", "not_object").order_id is None


def test_selection_filters_by_class_reason_partition_and_offsets() -> None:
    dead = letter(b"k", b"{}", "schema_violation", "items: Field required", partition=1, offset=7)
    assert Selection().matches(dead)
    assert Selection(error_classes=frozenset({"schema_violation"})).matches(dead)
    assert not Selection(error_classes=frozenset({"json_invalid"})).matches(dead)
    assert Selection(reason="FIELD REQUIRED").matches(dead)
    assert not Selection(reason="total").matches(dead)
    assert Selection(partition=1, first_offset=7, last_offset=7).matches(dead)
    assert not Selection(partition=0).matches(dead)
    assert not Selection(first_offset=8).matches(dead)
    assert not Selection(last_offset=6).matches(dead)


def test_replay_validates_with_the_consumers_rules() -> None:
    order = valid_order(9)
    key, value = record(order)
    assert revalidate(letter(key, value, "db_constraint")) == order
    mismatch = letter(b"CUST-99999", value, "key_mismatch")
    still = revalidate(mismatch)
    assert isinstance(still, PoisonMessage)
    assert still.error_class == "key_mismatch"
    assert revalidate(mismatch, accept=["key_mismatch"]) == order
    assert revalidate(letter(None, value, "missing_key"), accept=["missing_key"]) == order


def test_no_acceptance_overrides_the_contract() -> None:
    for case in POISON:
        if case.error_class in ("db_constraint", "missing_key", "key_mismatch"):
            continue
        outcome = revalidate(
            letter(case.key, case.value, case.error_class),
            accept=["missing_key", "key_mismatch", case.error_class],
        )
        assert isinstance(outcome, PoisonMessage), case.label


def test_replay_table_and_document() -> None:
    order = Order.model_validate(order_dict(3))
    report = ReplayReport("group-dlq-replay", dry_run=False, starts={0: 0}, marks={0: 2})
    report.outcomes = [
        Outcome(letter(*record(order), "db_constraint"), WRITTEN, order_id=order.order_id),
        Outcome(letter(b"k", b"x", "json_invalid"), INVALID, "json_invalid: bad"),
        Outcome(letter(b"k", b"y", "json_invalid"), SKIPPED),
    ]
    document = report.to_dict()
    assert document["counts"] == {WRITTEN: 1, INVALID: 1, SKIPPED: 1}
    assert document["committed"] == {"0": 2}
    assert report.written == 1
    table = text_of(dlq_command.render_replay(report))
    assert order.order_id in table
    assert "1 written" in table
    assert "progress 0:2" in table


# ------------------------------------------------------------------------- status


def member(name: str, *partitions: int) -> Member:
    return Member(
        member_id=f"foodpipe-consumer-{name}1234567-89ab-cdef-0123-456789abcdef",
        client_id="foodpipe-consumer",
        host="/10.0.0.5",
        partitions=tuple(("orders", p) for p in partitions),
    )


def snapshot(**changes: Any) -> status_command.Snapshot:
    a, b = member("a", 0, 2), member("b", 1)
    group = GroupState("order-processors", "STABLE", (a, b))
    topic = TopicState(
        "orders",
        group,
        (
            PartitionState(0, 0, 120, 120, a),
            PartitionState(1, 0, 100, 95, b),
            PartitionState(2, 5, 80, None, a),
        ),
    )
    values: dict[str, Any] = {
        "taken_at": datetime(2025, 1, 10, 12, 0, tzinfo=UTC),
        "monotonic": 100.0,
        "topic": topic,
        "dlq_topic": "orders.dlq",
        "dlq_messages": 4,
        "database": status_command.DatabaseState(rows=290, recent={10: 50, 60: 290}),
    }
    values.update(changes)
    return status_command.Snapshot(**values)


def test_status_document_has_offsets_lag_and_owners() -> None:
    document = status_command.to_dict(snapshot())
    json.dumps(document)  # serialisable as is
    assert document["lag"] == 0 + 5 + 75
    rows = {p["partition"]: p for p in document["topic"]["partitions"]}
    assert rows[1]["committed"] == 95
    assert rows[2]["committed"] is None
    assert rows[2]["lag"] == 75  # no commit yet: from the log start
    assert rows[0]["owner"]["host"] == "10.0.0.5"
    members = {m["member_id"]: m["partitions"] for m in document["group"]["members"]}
    assert sorted(members.values()) == [[0, 2], [1]]
    assert document["database"]["rows_per_s_10s"] == 5.0
    assert document["dlq"] == {"topic": "orders.dlq", "messages": 4}
    assert document["exit_code"] == 0
    assert "rates" not in document


def test_status_rates_come_from_offsets_moving_between_refreshes() -> None:
    before = snapshot(monotonic=100.0)
    group = before.topic.group if before.topic else GroupState("g", "STABLE")
    after = snapshot(
        monotonic=102.0,
        topic=TopicState(
            "orders",
            group,
            (
                PartitionState(0, 0, 140, 130, None),
                PartitionState(1, 0, 100, 100, None),
                PartitionState(2, 5, 80, None, None),
            ),
        ),
    )
    document = status_command.to_dict(after, before)
    assert document["rates"] == {"produced_per_s": 10.0, "consumed_per_s": 7.5}


def test_status_table_for_humans() -> None:
    table = text_of(status_command.render(snapshot()))
    assert "group order-processors (stable, 2 members)" in table
    assert "foodpipe-consumer@10.0.0.5#a1234567" in table
    assert "unassigned" not in table
    assert "rows in orders" in table
    assert "4 messages in orders.dlq" in table


def test_status_reports_what_is_unreachable() -> None:
    down = snapshot(database=status_command.DatabaseState(error="PostgreSQL at x: refused"))
    assert down.exit_code == 3
    assert "refused" in text_of(status_command.render(down))
    missing = snapshot(topic=None, kafka_error="topic orders does not exist", dlq_messages=None)
    assert missing.exit_code == 1
    assert "does not exist" in text_of(status_command.render(missing))
    assert status_command.to_dict(missing)["topic"] is None
    no_dlq = snapshot(dlq_messages=None, kafka_error="topic orders.dlq does not exist")
    assert no_dlq.exit_code == 1
    table = text_of(status_command.render(no_dlq))
    assert "missing in orders.dlq" in table
    assert "topic orders.dlq does not exist" in table
    gone = snapshot(topic=None, kafka_error="Kafka did not answer", kafka_unreachable=True)
    assert gone.exit_code == 3


def test_member_names_tell_two_members_on_one_host_apart() -> None:
    assert member("a").short == "foodpipe-consumer@10.0.0.5#a1234567"
    assert Member("abcdefghijklmnop", "c", "/h").short == "c@h#abcdefgh"
