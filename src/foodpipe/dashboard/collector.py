"""Reads Kafka and PostgreSQL for the dashboard, through the ops commands' own code.

- the pipeline: :func:`foodpipe.commands.status.collect` (what ``foodpipe status``
  shows), plus :func:`foodpipe.dashboard.queries.latency`;
- the latest dead letters: :func:`foodpipe.replay.latest_dead_letters` (the reader of
  ``foodpipe dlq list``), read again only when the DLQ's size changed;
- the audit: :func:`foodpipe.audit.audit` (``foodpipe audit --allow-lag``: on a running
  pipeline, orders not consumed yet are pending, not failures; loss below the committed
  offsets still fails).

All methods are blocking; the web app runs them in worker threads, one at a time per
kind. Every failure becomes a one-line error field of the document, never an exception.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaException
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from foodpipe.audit import audit
from foodpipe.commands.status import Snapshot, collect
from foodpipe.dashboard import queries
from foodpipe.dashboard.views import RebalanceTracker, audit_document, pipeline_document
from foodpipe.log import get_logger, scrub
from foodpipe.offsets import KafkaView, ReadTimeout, TopicMissing
from foodpipe.replay import DeadLetter, latest_dead_letters
from foodpipe.settings import Settings

#: Dead letters the page lists.
DEAD_LETTERS_SHOWN = 10


def one_line(exc: BaseException, service: str) -> str:
    """``<service>: <first line of the error>``, passwords scrubbed: what the page may show."""
    original = getattr(exc, "orig", None) or exc
    if isinstance(exc, KafkaException) and exc.args:
        error = exc.args[0]
        text = getattr(error, "str", lambda: str(error))()
    else:
        text = str(original)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return scrub(f"{service}: {first}")


class Collector:
    def __init__(
        self, settings: Settings, view: KafkaView, engine: Engine, audit_timeout_s: float = 120.0
    ) -> None:
        self.settings = settings
        self.view = view
        self.engine = engine
        self.audit_timeout_s = audit_timeout_s
        self.rebalances = RebalanceTracker()
        self._previous: Snapshot | None = None
        self._dead_letters: list[DeadLetter] | None = None
        self._dead_letters_size: int | None = None
        self._dead_letters_error: str | None = None
        self._audit_lock = threading.Lock()

    def pipeline(self) -> dict[str, Any]:
        snapshot = collect(self.view, self.engine, self.settings)
        self.rebalances.observe(snapshot.taken_at, snapshot.topic)
        try:
            latency = queries.latency(self.engine)
        except SQLAlchemyError as exc:
            latency = {"error": one_line(exc, "PostgreSQL")}
        self._refresh_dead_letters(snapshot.dlq_messages)
        document = pipeline_document(
            snapshot,
            self._previous,
            latency=latency,
            dead_letters=self._dead_letters,
            dead_letters_error=self._dead_letters_error,
            rebalances=self.rebalances,
        )
        self._previous = snapshot
        return document

    def _refresh_dead_letters(self, size: int | None) -> None:
        # Reading the DLQ's tail costs a consumer; its size comes free with the status.
        if size is None or (size == self._dead_letters_size and self._dead_letters_error is None):
            return
        try:
            self._dead_letters = latest_dead_letters(
                self.settings, self.view, DEAD_LETTERS_SHOWN, timeout_s=self.view.timeout_s
            )
            self._dead_letters_error = None
            self._dead_letters_size = size
        except (KafkaException, TopicMissing, ReadTimeout) as exc:
            self._dead_letters_error = one_line(exc, "Kafka")

    def business(self) -> dict[str, Any]:
        try:
            return {"error": None, **queries.business(self.engine)}
        except SQLAlchemyError as exc:
            return {"error": one_line(exc, "PostgreSQL")}

    def run_audit(self) -> dict[str, Any] | None:
        """The audit's document, or ``None`` when one is already running."""
        if not self._audit_lock.acquire(blocking=False):
            return None
        started_at, start = datetime.now(UTC), time.monotonic()
        try:
            report = audit(
                self.settings,
                engine=self.engine,
                admin=self.view.admin,
                allow_lag=True,
                timeout_s=self.audit_timeout_s,
            )
        except SQLAlchemyError as exc:
            error = one_line(exc, "PostgreSQL")
        except (KafkaException, TopicMissing, ReadTimeout) as exc:
            error = one_line(exc, "Kafka")
        else:
            get_logger("dashboard").info(
                "audit_done", ok=report.ok, seconds=round(time.monotonic() - start, 1)
            )
            return audit_document(
                report, error=None, started_at=started_at, seconds=time.monotonic() - start
            )
        finally:
            self._audit_lock.release()
        get_logger("dashboard").warning("audit_failed", error=error)
        return audit_document(
            None, error=error, started_at=started_at, seconds=time.monotonic() - start
        )
