"""Structured logging: JSON lines, bound context, no secrets."""

from __future__ import annotations

import io
import json
import logging

import pytest

from foodpipe.log import configure_logging, get_logger, scrub


def test_json_lines_carry_bound_context() -> None:
    out = io.StringIO()
    configure_logging("INFO", "json", stream=out)
    log = get_logger("consumer", topic="food-orders")
    log.bind(order_id="ORD-20261122-00001", partition=2, offset=41).info("written")
    log.debug("hidden at INFO")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 1
    assert lines[0]["event"] == "written"
    assert lines[0]["order_id"] == "ORD-20261122-00001"
    assert (lines[0]["topic"], lines[0]["partition"], lines[0]["offset"]) == ("food-orders", 2, 41)
    assert lines[0]["level"] == "info"
    assert lines[0]["ts"].endswith("Z")


def test_stdlib_loggers_render_as_json_too() -> None:
    out = io.StringIO()
    configure_logging("INFO", "json", stream=out)
    logging.getLogger("librdkafka").warning("broker down")
    line = json.loads(out.getvalue().splitlines()[-1])
    assert line["event"] == "broker down"
    assert line["logger"] == "librdkafka"


def test_passwords_in_urls_are_scrubbed_everywhere() -> None:
    out = io.StringIO()
    configure_logging("INFO", "json", stream=out)
    get_logger("x").info("connecting", url="postgresql://app:s3cret@db:5432/foodpipe")
    logging.getLogger("sqlalchemy").error("failed for postgresql://app:s3cret@db/foodpipe")
    text = out.getvalue()
    assert "s3cret" not in text
    assert "app:***@db" in text
    assert scrub("no url here") == "no url here"


def test_console_format_for_terminals() -> None:
    out = io.StringIO()
    configure_logging("DEBUG", "console", stream=out)
    get_logger("x").debug("hello", order_id="ORD-1")
    assert "hello" in out.getvalue()
    assert "ORD-1" in out.getvalue()


def _connect(dsn: str, password: str) -> None:
    # Both are locals of the frame that raises: a traceback with locals shows them.
    raise ConnectionError(f"could not connect to {dsn}")


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_exception_tracebacks_never_show_locals_or_url_passwords(fmt: str) -> None:
    out = io.StringIO()
    configure_logging("INFO", fmt, stream=out)
    # Built at run time: a traceback quotes source lines, and this test is about values.
    secret = "-".join(("hunter2", "local"))
    dsn = "postgresql://app:{}@db:5432/foodpipe".format("-".join(("hunter2", "url")))
    for logger in (logging.getLogger("sqlalchemy.pool"), get_logger("db")):
        try:
            _connect(dsn, secret)
        except ConnectionError:
            logger.exception("connect failed")
    text = out.getvalue()
    assert text.count("connect failed") == 2
    assert "ConnectionError" in text  # the traceback is there, only without secrets
    assert "hunter2-local" not in text
    assert "hunter2-url" not in text
