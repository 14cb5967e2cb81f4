"""Structured logging, set up in one place.

Services log through structlog. Lines are JSON when stdout is not a terminal (containers,
CI, ``docker compose logs``) and human-readable on a terminal. Per-message context
(order_id, topic, partition, offset) is bound by the caller with ``log.bind(...)``.

A processor scrubs passwords from any string that looks like a connection URL, so a
DATABASE_URL can never leak into a log line, whoever logs it. Tracebacks are turned into
text *before* that processor, so it scrubs them too, and they never carry the values of
local variables: structlog's console renderer would otherwise print exceptions with
Rich's ``show_locals=True``, and a failed connect printed the password four times.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s]+)@")
#: ``?password=...`` / ``&sslpassword=...``: libpq and psycopg2 take passwords there too.
_QUERY_PASSWORD = re.compile(r"(?i)(?P<name>[?&][^=&\s]*password=)[^&#\s]*")


def scrub(text: str) -> str:
    """Replace every URL password in ``text`` with ***.

    Both places a connection URL can hold one: ``scheme://user:password@`` and a
    ``password`` (or ``sslpassword``) query parameter.
    """
    text = _URL_PASSWORD.sub(r"\g<scheme>\g<user>:***@", text)
    return _QUERY_PASSWORD.sub(r"\g<name>***", text)


def _scrub_secrets(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in event_dict.items():
        if isinstance(value, str) and "://" in value:
            event_dict[key] = scrub(value)
    return event_dict


def configure_logging(level: str = "INFO", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog and the stdlib root logger to write one format to ``stream``."""
    out = stream if stream is not None else sys.stdout
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        # plain_traceback: no locals (passwords live in them), and no warning that the
        # traceback arrives already formatted by format_exc_info below.
        else structlog.dev.ConsoleRenderer(
            colors=out.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        # Before the scrubber, so a URL in an exception message is scrubbed as well.
        structlog.processors.format_exc_info,
        _scrub_secrets,
    ]
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # Third-party libraries log through stdlib logging; render them the same way.
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=renderer,
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def get_logger(name: str, **context: Any) -> Any:
    """A structlog logger carrying ``logger=name`` and any extra bound context."""
    return structlog.get_logger().bind(logger=name, **context)
