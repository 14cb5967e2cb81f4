"""``foodpipe produce``: argument checks and wiring (Kafka replaced by a fake)."""

from __future__ import annotations

import argparse
import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from foodpipe import cli
from foodpipe.commands import produce
from foodpipe.errors import FatalError
from foodpipe.log import configure_logging
from foodpipe.producer.measure import (
    achieved_rate,
    json_lines,
    produce_argv,
    read_status_kib,
    summary_of,
)
from foodpipe.settings import Settings, load_settings


def _parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["produce", *argv])


def test_defaults() -> None:
    args = _parse()
    assert (args.rate, args.count, args.seed) == (None, None, None)
    assert (args.max_items, args.max_quantity) == (5, 3)
    assert (args.wait, args.flush_timeout, args.progress) == (30.0, 8.0, None)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rate", "-1"], "must be a finite number >= 0"),
        (["--rate", "inf"], "must be a finite number >= 0"),
        (["--rate", "nan"], "must be a finite number >= 0"),
        (["--rate", "fast"], "is not a number"),
        (["--count", "0"], "is not between 1 and"),
        (["--count", "1.5"], "is not a whole number"),
        (["--seed", "-1"], "is not between 0 and"),
        (["--max-items", "21"], "is not between 1 and 20"),
        (["--max-quantity", "0"], "is not between 1 and 1000"),
    ],
)
def test_bad_arguments_are_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        _parse(*argv)
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


class FakeKafkaProducer:
    instances: list[FakeKafkaProducer] = []
    fatal_on_poll = False

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.pending: list[Any] = []
        self.sent: list[tuple[bytes, bytes]] = []
        FakeKafkaProducer.instances.append(self)

    def produce(
        self, topic: str, *, value: bytes, key: bytes, headers: Any, on_delivery: Any
    ) -> None:
        self.pending.append((key, value, on_delivery))

    def poll(self, timeout: float = 0) -> int:
        if FakeKafkaProducer.fatal_on_poll:
            self.config["error_cb"](KafkaError(KafkaError._FATAL, "fenced", fatal=True))
        served, self.pending = self.pending, []
        for key, value, callback in served:
            self.sent.append((key, value))
            callback(None, _Msg(value))
        return len(served)


class _Msg:
    def __init__(self, value: bytes) -> None:
        self._value = value

    def value(self) -> bytes:
        return self._value

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 0


@pytest.fixture
def wired(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    FakeKafkaProducer.instances.clear()
    monkeypatch.setattr(FakeKafkaProducer, "fatal_on_poll", False)
    monkeypatch.setattr(produce, "AdminClient", lambda _config: object())
    monkeypatch.setattr(produce, "wait_for_broker", lambda *_a: None)
    monkeypatch.setattr(produce, "ensure_topics", lambda _admin, specs: {specs[0].name: "created"})
    monkeypatch.setattr(produce, "Producer", FakeKafkaProducer)
    configure_logging("INFO", "json", stream=io.StringIO())
    return load_settings(_env_file=None, producer_state_dir=tmp_path / "state", order_rate=0)


def test_run_wires_the_parts_and_exits_0_when_all_is_confirmed(wired: Settings) -> None:
    assert produce.run(_parse("--count", "25", "--seed", "3"), wired) == 0
    (kafka,) = FakeKafkaProducer.instances
    assert len(kafka.sent) == 25
    assert kafka.config["enable.idempotence"] is True
    assert kafka.config["acks"] == "all"


def test_a_fatal_client_error_from_librdkafka_stops_the_run(
    wired: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FakeKafkaProducer, "fatal_on_poll", True)
    assert produce.run(_parse("--count", "1000", "--rate", "0"), wired) == 1
    (kafka,) = FakeKafkaProducer.instances
    assert len(kafka.sent) < 1000


def test_run_with_a_progress_bar(wired: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert produce.run(_parse("--count", "10", "--progress"), wired) == 0
    assert "10/10" in capsys.readouterr().err


def test_a_topic_that_cannot_be_created_is_one_line(
    wired: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(_admin: object, _specs: object) -> dict[str, str]:
        raise KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "denied"))

    monkeypatch.setattr(produce, "ensure_topics", refuse)
    with pytest.raises(FatalError, match="run `foodpipe topics`") as caught:
        produce.run(_parse("--count", "1"), wired)
    assert "\n" not in str(caught.value)


def test_achieved_rate_counts_a_window_after_the_warm_up() -> None:
    base = 1_700_000_000.0
    stamps = [datetime.fromtimestamp(base + i / 10, UTC) for i in range(400)]  # 10/s, 40 s
    assert achieved_rate(stamps, 30.0, skip_s=1.0) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="less than"):
        achieved_rate(stamps[:100], 30.0)
    assert achieved_rate([], 30.0) == 0.0


def test_status_and_log_helpers(tmp_path: Path) -> None:
    import os

    peak = read_status_kib(os.getpid())
    assert peak is not None
    assert peak > 1000
    assert read_status_kib(os.getpid(), "NoSuchField") is None
    assert read_status_kib(2**22 + 12345) is None
    log = tmp_path / "x.log"
    log.write_text(
        '{"event": "producer started"}\nnot json\n{broken\n{"event": "producer stopped"}\n'
    )
    lines = json_lines(log)
    assert [ln["event"] for ln in lines] == ["producer started", "producer stopped"]
    assert summary_of(lines) == {"event": "producer stopped"}
    assert summary_of(lines[:1]) is None
    assert produce_argv(["--count", "1"])[-3:] == ["produce", "--count", "1"]
