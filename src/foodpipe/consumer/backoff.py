"""Capped exponential backoff with jitter, as a pure iterator of delays."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays ``initial, 2*initial, 4*initial, ...`` capped at ``maximum``.

    Each delay is jittered down by up to ``jitter`` (a fraction), so several consumers
    that lost the database at the same moment do not all come back at the same moment.
    """

    initial: float = 0.5
    maximum: float = 30.0
    jitter: float = 0.2
    rng: random.Random = field(default_factory=random.Random)
    attempts: int = 0

    def next(self) -> float:
        # The exponent is capped too: after hours of outage 2**attempts would overflow.
        base: float = min(self.maximum, self.initial * 2.0 ** min(self.attempts, 32))
        self.attempts += 1
        return base * (1 - self.jitter * self.rng.random())

    def reset(self) -> None:
        self.attempts = 0
