"""A schedule-based rate limiter that sleeps instead of spinning.

Slot ``k`` is due at ``start + k / rate``. :meth:`RateLimiter.wait` sleeps until the
next slot's deadline, then advances the deadline by exactly one interval. Because the
deadline advances from the *schedule*, not from when the caller woke up, oversleeping
and the work done between slots do not accumulate into drift: a late slot is followed
by shorter waits until the schedule is met again. That keeps the long-run rate exact
(well within ±2% over 30 s at 10/s and at 1,000/s) with no busy-waiting.

Catching up is bounded: after a stall longer than ``max_lag_s`` (a full local queue,
a paused process), the schedule restarts from now instead of bursting out everything
that was "owed".

The clock and the sleep function are injected so that the unit tests can drive the
limiter through simulated minutes in microseconds, with no real sleeps. The producer
passes a sleep that polls Kafka, so delivery reports are served while it waits.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def _never() -> bool:
    return False


class RateLimiter:
    """Releases one slot per ``1 / rate`` seconds; ``rate == 0`` means unthrottled."""

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
        max_lag_s: float = 1.0,
        max_sleep_s: float = 0.25,
    ) -> None:
        if rate < 0:
            raise ValueError(f"rate must be >= 0, got {rate}")
        self.rate = rate
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._clock = clock
        self._sleep = sleep
        self._max_lag_s = max_lag_s
        # Sleep in bounded chunks so a stop request is noticed within max_sleep_s even
        # at very low rates.
        self._max_sleep_s = max_sleep_s
        self._deadline: float | None = None

    def wait(
        self,
        should_stop: Callable[[], bool] = _never,
        sleep: Callable[[float], object] | None = None,
    ) -> bool:
        """Block until the next slot is due. ``False`` if ``should_stop()`` became true.

        ``sleep`` overrides the injected sleep for this call (the producer passes one
        that serves Kafka delivery reports while waiting).
        """
        if self._interval == 0.0:
            return not should_stop()
        do_sleep = sleep if sleep is not None else self._sleep
        now = self._clock()
        if self._deadline is None or now - self._deadline > self._max_lag_s:
            self._deadline = now
        while True:
            if should_stop():
                return False
            remaining = self._deadline - now
            if remaining <= 0:
                break
            do_sleep(min(remaining, self._max_sleep_s))
            now = self._clock()
        self._deadline += self._interval
        return True
