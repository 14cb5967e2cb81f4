"""The consumer's group timeouts, its database bounds, and the test-only fault hook.

- ``KAFKA_SESSION_TIMEOUT_MS`` / ``KAFKA_MAX_POLL_INTERVAL_MS`` reach librdkafka, keep the
  product's defaults, and refuse a combination librdkafka would refuse later.
- Every database wait of the consumer is bounded by a third of ``max.poll.interval.ms``,
  so a slow database can never make the poll loop miss its deadline (the fault suite's
  case 5 shows the group survives it).
- ``FOODPIPE_FAULT=crash-after-db-commit:N`` is off by default, strict about its syntax,
  and fires exactly between the database commit and the offset commit.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from foodpipe.consumer import faults
from foodpipe.db import CONSUMER_SESSION, consumer_session
from foodpipe.kafka import consumer_config
from foodpipe.settings import ConfigError, load_settings
from tests.poison import valid_order
from tests.unit.test_consumer_service import make_harness, msg


def test_defaults_are_librdkafkas_but_a_heartbeat_a_second() -> None:
    config = consumer_config(load_settings(_env_file=None))
    assert config["session.timeout.ms"] == 45_000
    # Not librdkafka's 3 s: a scale-out settles in two heartbeats (see group_timeouts).
    assert config["heartbeat.interval.ms"] == 1_000
    assert config["max.poll.interval.ms"] == 300_000
    assert consumer_session(300_000) == CONSUMER_SESSION


def test_group_timeouts_are_settings() -> None:
    settings = load_settings(
        _env_file=None, kafka_session_timeout_ms=6_000, kafka_max_poll_interval_ms=10_000
    )
    config = consumer_config(settings)
    assert config["session.timeout.ms"] == 6_000
    assert config["heartbeat.interval.ms"] == 1_000
    # The shortest session allowed still gets three heartbeats: one lost heartbeat never
    # evicts the member.
    shortest = load_settings(_env_file=None, kafka_session_timeout_ms=6_000)
    assert consumer_config(shortest)["heartbeat.interval.ms"] * 3 <= 6_000
    assert config["max.poll.interval.ms"] == 10_000


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"kafka_session_timeout_ms": 60_000, "kafka_max_poll_interval_ms": 30_000}, "at least"),
        ({"kafka_session_timeout_ms": 1_000}, "KAFKA_SESSION_TIMEOUT_MS"),
        ({"kafka_max_poll_interval_ms": 1_000}, "KAFKA_MAX_POLL_INTERVAL_MS"),
    ],
)
def test_impossible_group_timeouts_are_refused_in_one_line(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings(_env_file=None, **values)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("interval_ms", [10_000, 15_000, 90_000, 300_000, 3_600_000])
def test_no_database_wait_exceeds_a_third_of_the_poll_interval(interval_ms: int) -> None:
    session = consumer_session(interval_ms)

    def ms(value: str) -> int:
        return int(value[:-2]) if value.endswith("ms") else int(value[:-1]) * 1000

    for name in ("lock_timeout", "statement_timeout"):
        assert ms(session[name]) <= interval_ms // 3, name
    # ... and never longer than the values chosen for the default interval.
    assert ms(session["lock_timeout"]) <= 5_000
    assert ms(session["statement_timeout"]) <= 30_000


def test_fault_hook_is_off_by_default() -> None:
    assert faults.after_db_commit_hook({}) is None
    assert faults.after_db_commit_hook({"FOODPIPE_FAULT": "  "}) is None


@pytest.mark.parametrize(
    "spec", ["crash", "crash-after-db-commit", "crash-after-db-commit:0", "explode:1", "x:y"]
)
def test_fault_hook_refuses_what_it_does_not_understand(spec: str) -> None:
    with pytest.raises(faults.FaultSpecError, match="FOODPIPE_FAULT") as caught:
        faults.after_db_commit_hook({"FOODPIPE_FAULT": spec})
    assert caught.value.exit_code == 2


def test_fault_hook_kills_the_process_on_the_nth_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    kills: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: kills.append((pid, sig)))
    hook = faults.after_db_commit_hook({"FOODPIPE_FAULT": "crash-after-db-commit:3"})
    assert hook is not None
    hook()
    hook()
    assert kills == []
    hook()
    assert kills == [(os.getpid(), signal.SIGKILL)]


def test_the_loop_calls_the_hook_after_the_write_and_before_the_offset_commit() -> None:
    h = make_harness()
    h.service._after_db_commit = lambda: h.events.append(("hook",))
    h.consumer.steps = [[msg(0, 10, valid_order(1))], [msg(0, 11, valid_order(2))]]
    h.run()
    kinds = [event[0] for event in h.events if event[0] in ("write", "hook", "commit")]
    assert kinds == ["write", "hook", "commit", "write", "hook", "commit"]
