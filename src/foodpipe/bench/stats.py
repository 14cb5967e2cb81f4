"""Median and spread of a metric over the runs of one bench."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Summary:
    """The values of one metric, one per run, and what a reader wants from them."""

    runs: tuple[float, ...]

    @property
    def median(self) -> float:
        return float(statistics.median(self.runs))

    @property
    def min(self) -> float:
        return min(self.runs)

    @property
    def max(self) -> float:
        return max(self.runs)

    @property
    def spread_pct(self) -> float:
        """``(max - min) / median`` in percent: how much the runs disagree."""
        median = self.median
        if median == 0:
            return 0.0
        return abs(self.max - self.min) / abs(median) * 100.0

    def worst(self, higher_is_better: bool) -> float:
        return self.min if higher_is_better else self.max

    def to_dict(self) -> dict[str, Any]:
        return {
            "runs": [_round(v) for v in self.runs],
            "median": _round(self.median),
            "min": _round(self.min),
            "max": _round(self.max),
            "spread_pct": round(self.spread_pct, 1),
        }


def summarize(values: Iterable[float]) -> Summary:
    runs = tuple(float(v) for v in values)
    if not runs:
        raise ValueError("no values to summarise")
    return Summary(runs)


def _round(value: float) -> float:
    """Four significant digits: the runs disagree far more than that."""
    if value == 0:
        return 0.0
    return float(f"{value:.4g}")
