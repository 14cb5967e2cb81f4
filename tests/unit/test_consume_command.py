"""``foodpipe consume``'s entrypoint: how it leaves when the group never took it back."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from foodpipe.commands import consume
from foodpipe.errors import MembershipLost


class _WedgedApp:
    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        pass

    def request_stop(self) -> None:
        pass

    def run(self) -> int:
        raise MembershipLost(
            "this member lost its partitions 61s ago and the group never took it back"
        )


def test_a_wedged_client_is_left_behind_with_os_exit_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    exits: list[int] = []

    def fake_exit(code: int) -> None:
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(consume, "ConsumerApp", _WedgedApp)
    monkeypatch.setattr(consume, "tune_for_throughput", lambda: None)  # keep pytest's GC
    monkeypatch.setattr(consume.signal, "signal", lambda *_args: None)  # keep pytest's
    monkeypatch.setattr(consume.os, "_exit", fake_exit)
    with pytest.raises(SystemExit):
        consume.run(argparse.Namespace(wait=1.0), settings=None)  # type: ignore[arg-type]
    # os._exit, not a normal return: finalising the client would block on it.
    assert exits == [3]
    err = capsys.readouterr().err
    assert (
        err
        == "foodpipe: this member lost its partitions 61s ago and the group never took it back\n"
    )


def test_the_interpreter_is_tuned_once_before_the_loop_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []

    class _App(_WedgedApp):
        def run(self) -> int:
            calls.append("run")
            return 0

    monkeypatch.setattr(consume, "ConsumerApp", _App)
    monkeypatch.setattr(consume.signal, "signal", lambda *_args: None)
    monkeypatch.setattr(consume, "tune_for_throughput", lambda: calls.append("tune"))

    assert consume.run(argparse.Namespace(wait=1.0), settings=None) == 0  # type: ignore[arg-type]
    assert calls == ["tune", "run"]
