"""How the producer shows its counters: a log line every few seconds, or a progress bar."""

from __future__ import annotations

from typing import Any

from foodpipe.log import get_logger
from foodpipe.producer.stats import ProducerStats


class LogReporter:
    """One INFO line every ``interval_s``: the delivery rate over the interval and totals.

    Never a line per order at INFO; per-order lines are DEBUG.
    """

    def __init__(self, interval_s: float = 5.0, logger: Any = None) -> None:
        self._interval_s = interval_s
        self._log = logger if logger is not None else get_logger("producer")
        self._last_t: float | None = None
        self._last_delivered = 0

    def update(self, stats: ProducerStats, now: float) -> None:
        if self._last_t is None:
            self._last_t, self._last_delivered = now, stats.delivered
            return
        elapsed = now - self._last_t
        if elapsed < self._interval_s:
            return
        self._log.info(
            "progress",
            rate=round((stats.delivered - self._last_delivered) / elapsed, 1),
            delivered=stats.delivered,
            failed=stats.failed,
            in_flight=stats.in_flight,
            retried=stats.retried,
        )
        self._last_t, self._last_delivered = now, stats.delivered

    def close(self, stats: ProducerStats, now: float) -> None:
        """Nothing to do: the producer logs its own final summary."""


class ProgressReporter:
    """A rich progress bar towards ``--count`` confirmed deliveries (terminals only)."""

    def __init__(self, total: int, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]delivered"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>9.1f}/s"),
            TextColumn("failed {task.fields[failed]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console if console is not None else Console(stderr=True),
            transient=False,
        )
        self._task = self._progress.add_task("produce", total=total, rate=0.0, failed=0)
        self._progress.start()
        self._started: float | None = None

    def update(self, stats: ProducerStats, now: float) -> None:
        if self._started is None:
            self._started = now
        elapsed = now - self._started
        rate = stats.delivered / elapsed if elapsed > 0 else 0.0
        self._progress.update(self._task, completed=stats.delivered, rate=rate, failed=stats.failed)

    def close(self, stats: ProducerStats, now: float) -> None:
        self.update(stats, now)
        self._progress.stop()
