"""Structured logging: JSON lines, bound context, no secrets."""

from __future__ import annotations

import io
import json
import logging

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
