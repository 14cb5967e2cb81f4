"""The shared command-line number parsers: values accepted, and the one-line errors."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import pytest

from foodpipe.cli import main
from foodpipe.commands.argtypes import number, whole


def test_whole_numbers_within_bounds() -> None:
    assert whole()("-7") == -7
    assert whole(low=1)("1") == 1
    assert whole(1, 20)("20") == 20
    assert whole(high=5)("5") == 5


def test_numbers_within_bounds() -> None:
    assert number()("-2.5") == -2.5
    assert number(low=0)("0") == 0.0
    assert number(above=0)("0.001") == 0.001
    assert number(above=0, below=3600)("3599.9") == 3599.9


@pytest.mark.parametrize(
    ("parser", "text", "message"),
    [
        (whole(), "1.5", "'1.5' is not a whole number"),
        (whole(), "ten", "'ten' is not a whole number"),
        (whole(1, 20), "21", "21 is not between 1 and 20"),
        (whole(1, 20), "0", "0 is not between 1 and 20"),
        (whole(low=100), "5", "5 must be at least 100"),
        (whole(high=5), "6", "6 must be at most 5"),
        (number(), "fast", "'fast' is not a number"),
        (number(), "inf", "'inf' must be a finite number"),
        (number(low=0), "nan", "'nan' must be a finite number >= 0"),
        (number(low=0), "-1", "'-1' must be a finite number >= 0"),
        (number(above=0), "0", "'0' must be a finite number > 0"),
        (number(above=0, below=3600), "3600", "'3600' must be a finite number > 0 and < 3600"),
        (number(above=0, below=3600), "-inf", "'-inf' must be a finite number > 0 and < 3600"),
    ],
)
def test_errors_name_the_value_and_what_is_expected(
    parser: Callable[[str], object], text: str, message: str
) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as caught:
        parser(text)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    "argv",
    [
        ["consume", "--wait", "-5"],
        ["consume", "--wait", "nan"],
        ["topics", "--wait", "-1"],
        ["topics", "--min-brokers", "0"],
        ["audit", "--timeout", "-1"],
        ["dlq", "list", "--timeout", "0"],
        ["dlq", "list", "--limit", "-3"],
        ["dlq", "list", "--partition", "-1"],
        ["dlq", "replay", "--timeout", "inf"],
    ],
)
def test_every_command_refuses_a_negative_or_endless_wait(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Found: `foodpipe consume --wait -5` was accepted, then blamed the broker.
    with pytest.raises(SystemExit) as exited:
        main(["--env-file", "/dev/null", *argv])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {argv[-2]}: " in err
    assert "must be" in err or "is not between" in err
