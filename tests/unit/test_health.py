"""``foodpipe health`` without services: verdicts, exit codes, rendering, arguments, and
each check against stand-in Kafka views (the real ones run in
tests/integration/test_health.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from foodpipe.cli import build_parser
from foodpipe.commands import health
from foodpipe.commands.health import Check, Report
from foodpipe.offsets import GroupState, Member, PartitionState, TopicMissing, TopicState
from foodpipe.settings import Settings, load_settings


def settings(**overrides: Any) -> Settings:
    return load_settings(_env_file=None, **overrides)


def report(*statuses: str, unreachable: bool = False) -> Report:
    return Report(
        [
            Check(f"c{i}", status, "detail", unreachable=unreachable and status == "fail")  # type: ignore[arg-type]
            for i, status in enumerate(statuses)
        ]
    )


def test_all_ok_is_healthy_exit_0() -> None:
    assert report("ok", "ok").healthy
    assert report("ok", "ok").exit_code == 0


def test_a_failed_check_is_exit_1() -> None:
    assert report("ok", "fail").exit_code == 1


def test_a_skipped_check_is_not_healthy() -> None:
    assert not report("ok", "skip").healthy


def test_an_unreachable_dependency_is_exit_3() -> None:
    assert report("fail", "skip", unreachable=True).exit_code == 3


def test_text_report_names_every_check() -> None:
    text = health.render_text(
        Report([Check("broker", "ok", "1 broker"), Check("lag", "fail", "too much")])
    )
    lines = text.splitlines()
    assert lines[0] == "foodpipe health: UNHEALTHY (1/2 checks ok)"
    assert lines[1].split() == ["ok", "broker", "1", "broker"]
    assert lines[2].split()[:2] == ["FAIL", "lag"]


def test_json_report_is_one_document() -> None:
    data = json.loads(health.render_json(Report([Check("lag", "ok", "0", {"lag": 0})])))
    assert data == {
        "healthy": True,
        "exit_code": 0,
        "checks": [
            {"name": "lag", "status": "ok", "detail": "0", "data": {"lag": 0}, "unreachable": False}
        ],
    }


@pytest.mark.parametrize(
    ("argv", "field_name", "value"),
    [
        (["health"], "max_lag", 1000),
        (["health"], "min_members", 1),
        (["health", "--max-lag", "0"], "max_lag", 0),
        (["health", "--min-members", "0"], "min_members", 0),
        (["health", "--wait", "2.5"], "wait", 2.5),
        (["health", "--timeout", "3"], "timeout", 3.0),
        (["health", "--json"], "json", True),
    ],
)
def test_arguments(argv: list[str], field_name: str, value: object) -> None:
    assert getattr(build_parser().parse_args(argv), field_name) == value


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["health", "--max-lag", "-1"], "argument --max-lag: -1 must be at least 0"),
        (["health", "--max-lag", "many"], "argument --max-lag: 'many' is not a whole number"),
        (["health", "--timeout", "0"], "argument --timeout: '0' must be a finite number > 0"),
        (["health", "--wait", "-1"], "argument --wait: '-1' must be a finite number >= 0"),
        (["health", "--wait", "soon"], "argument --wait: 'soon' is not a number"),
    ],
)
def test_bad_arguments_are_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(message)


# ---------------------------------------------------------------- checks, with stand-ins


@dataclass
class FakeTopic:
    partitions: dict[int, object]
    error: object = None


@dataclass
class FakeMetadata:
    topics: dict[str, FakeTopic] = field(default_factory=dict)


def test_topics_with_the_expected_partitions_pass() -> None:
    metadata = FakeMetadata(
        {"food-orders": FakeTopic(dict.fromkeys(range(3))), "food-orders.dlq": FakeTopic({0: 0})}
    )
    checks = health.check_topics(metadata, settings())  # type: ignore[arg-type]
    assert [(c.name, c.status) for c in checks] == [("topic", "ok"), ("dlq_topic", "ok")]


def test_a_topic_with_other_partitions_fails_and_says_why() -> None:
    metadata = FakeMetadata(
        {"food-orders": FakeTopic({0: 0}), "food-orders.dlq": FakeTopic({0: 0})}
    )
    topic, _dlq = health.check_topics(metadata, settings())  # type: ignore[arg-type]
    assert topic.status == "fail"
    assert "has 1 partitions, expected 3" in topic.detail


def test_missing_topics_fail_with_the_fix() -> None:
    topic, dlq = health.check_topics(FakeMetadata(), settings())  # type: ignore[arg-type]
    assert (topic.status, dlq.status) == ("fail", "fail")
    assert "foodpipe topics" in topic.detail
    assert "foodpipe topics" in dlq.detail


class FakeView:
    def __init__(
        self,
        group: GroupState | Exception,
        state: TopicState | Exception | None = None,
    ) -> None:
        self._group = group
        self._state = state

    def group(self, _group: str) -> GroupState:
        if isinstance(self._group, Exception):
            raise self._group
        return self._group

    def topic_state(self, _topic: str, _group: str) -> TopicState:
        if isinstance(self._state, Exception):
            raise self._state
        assert self._state is not None
        return self._state


def member(*partitions: int) -> Member:
    return Member(
        "m-1", "foodpipe", "/10.0.0.1", partitions=tuple(("food-orders", p) for p in partitions)
    )


def test_group_with_enough_members_passes() -> None:
    view = FakeView(GroupState("order-processors", "STABLE", (member(0, 1), member(2))))
    check = health.check_group(view, settings(), min_members=2)  # type: ignore[arg-type]
    assert check.status == "ok"
    assert check.data["members"] == 2
    assert check.data["assigned_partitions"] == 3


def test_group_without_members_fails_unless_none_are_expected() -> None:
    view = FakeView(GroupState("order-processors", "DEAD"))
    failed = health.check_group(view, settings(), min_members=1)  # type: ignore[arg-type]
    assert failed.status == "fail"
    assert "foodpipe consume" in failed.detail
    assert health.check_group(view, settings(), min_members=0).status == "ok"  # type: ignore[arg-type]


def test_group_that_cannot_be_described_is_unreachable() -> None:
    error = KafkaException(KafkaError(KafkaError._TRANSPORT, "broker down"))
    check = health.check_group(FakeView(error), settings(), min_members=1)  # type: ignore[arg-type]
    assert check.status == "fail"
    assert check.unreachable


def topic_state(*rows: tuple[int, int, int, int | None]) -> TopicState:
    return TopicState(
        "food-orders",
        GroupState("order-processors", "STABLE"),
        tuple(PartitionState(p, start, end, committed) for p, start, end, committed in rows),
    )


def test_lag_within_the_threshold_passes() -> None:
    view = FakeView(GroupState("g", "STABLE"), topic_state((0, 0, 10, 10), (1, 0, 5, 3)))
    check = health.check_lag(view, settings(), max_lag=2)  # type: ignore[arg-type]
    assert check.status == "ok"
    assert check.data["lag"] == 2
    assert check.data["partitions"] == {"0": 0, "1": 2}


def test_lag_above_the_threshold_fails() -> None:
    # Partition 1 has no committed offset: everything retained (from log start 4) is lag.
    view = FakeView(GroupState("g", "STABLE"), topic_state((0, 0, 10, 10), (1, 4, 10, None)))
    check = health.check_lag(view, settings(), max_lag=5)  # type: ignore[arg-type]
    assert check.status == "fail"
    assert check.data["lag"] == 6
    assert "more than 5" in check.detail


def test_lag_of_a_vanished_topic_fails() -> None:
    view = FakeView(GroupState("g", "STABLE"), TopicMissing("topic food-orders does not exist"))
    check = health.check_lag(view, settings(), max_lag=5)  # type: ignore[arg-type]
    assert check.status == "fail"
    assert not check.unreachable


class NoBroker:
    def list_topics(self, timeout: float) -> None:
        raise KafkaException(KafkaError(KafkaError._TRANSPORT, "Broker transport failure"))


def test_without_a_broker_the_kafka_checks_are_skipped_and_the_database_still_runs() -> None:
    unreachable_db = settings(
        kafka_bootstrap_servers="127.0.0.1:1",
        database_url="postgresql+psycopg2://u:s3cret@127.0.0.1:1/db",
    )
    result = health.run_checks(NoBroker(), unreachable_db, health.Thresholds(1000, 1, 1.0))  # type: ignore[arg-type]
    assert [(c.name, c.status) for c in result.checks] == [
        ("broker", "fail"),
        ("topic", "skip"),
        ("dlq_topic", "skip"),
        ("database", "fail"),
        ("consumer_group", "skip"),
        ("lag", "skip"),
    ]
    assert result.exit_code == 3
    assert "KAFKA_BOOTSTRAP_SERVERS" in result.checks[0].detail
    database = result.checks[3]
    assert database.unreachable
    assert "s3cret" not in database.detail
    assert "***" in database.detail
