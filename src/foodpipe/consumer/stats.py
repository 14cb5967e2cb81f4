"""The consumer's counters, in one object.

The poll loop only increments; the periodic summary line reads. A later issue exports
the same object to Prometheus, so the names here are the metric names to be.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Batch latencies kept for the percentiles of one summary window. A window of a few
#: seconds holds far fewer batches than this; the bound only protects memory.
MAX_LATENCY_SAMPLES = 10_000


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list (0.0 when it is empty)."""
    if not sorted_values:
        return 0.0
    rank = min(len(sorted_values), max(1, math.ceil(fraction * len(sorted_values))))
    return sorted_values[rank - 1]


@dataclass
class ConsumerStats:
    """Totals since start-up, plus batch latencies of the current summary window."""

    clock: Callable[[], float] = time.monotonic
    consumed: int = 0  # messages returned by Kafka (valid or not)
    written: int = 0  # rows inserted (new orders)
    duplicates: int = 0  # orders whose order_id was already stored or repeated in a batch
    conflicts: int = 0  # duplicates whose payload differs from the stored row
    dead_lettered: int = 0
    dead_lettered_by_class: Counter[str] = field(default_factory=Counter)
    batches: int = 0  # batches whose offsets were committed
    db_retries: int = 0  # failed write attempts that were retried (transient errors)
    commit_failures: int = 0  # offset commits that failed and were retried later
    rebalances: int = 0  # assign / revoke / lost callbacks
    dropped_on_revoke: int = 0  # unwritten messages given back to the group on revoke or lost
    abandoned: int = 0  # unwritten messages left for redelivery at shutdown
    skipped_committed: int = 0  # messages below the group's committed offset (stored already)
    _latencies: deque[float] = field(default_factory=lambda: deque(maxlen=MAX_LATENCY_SAMPLES))
    _window_start: float = field(default=0.0)
    _window_written: int = 0

    def __post_init__(self) -> None:
        self._window_start = self.clock()

    def record_batch(self, latency_s: float) -> None:
        self.batches += 1
        self._latencies.append(latency_s)

    def record_dead_letter(self, error_class: str) -> None:
        self.dead_lettered += 1
        self.dead_lettered_by_class[error_class] += 1

    def due(self, interval_s: float) -> bool:
        return self.clock() - self._window_start >= interval_s

    def snapshot(self) -> dict[str, Any]:
        """The summary of the window so far; totals are since start-up."""
        elapsed = max(self.clock() - self._window_start, 1e-9)
        latencies = sorted(self._latencies)
        return {
            "written": self.written,
            "duplicates": self.duplicates,
            "conflicts": self.conflicts,
            "dead_lettered": self.dead_lettered,
            "dead_lettered_by_class": dict(self.dead_lettered_by_class),
            "batches": self.batches,
            "consumed": self.consumed,
            "db_retries": self.db_retries,
            "commit_failures": self.commit_failures,
            "rebalances": self.rebalances,
            "skipped_committed": self.skipped_committed,
            "rate_per_s": round((self.written - self._window_written) / elapsed, 1),
            "window_batches": len(latencies),
            "batch_p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
            "batch_p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        }

    def roll_window(self) -> dict[str, Any]:
        """Return the snapshot and start a new window."""
        summary = self.snapshot()
        self._latencies.clear()
        self._window_start = self.clock()
        self._window_written = self.written
        return summary
