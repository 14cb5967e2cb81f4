"""The rate limiter, driven by a simulated clock: no real sleeps anywhere."""

from __future__ import annotations

import random

import pytest

from foodpipe.producer.ratelimit import RateLimiter


class SimClock:
    """Simulated time. ``sleep`` oversleeps a little, like a real OS scheduler."""

    def __init__(self, oversleep_max: float = 0.0, seed: int = 0) -> None:
        self.t = 5_000.0
        self.sleeps: list[float] = []
        self._oversleep_max = oversleep_max
        self._rng = random.Random(seed)

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        assert seconds > 0, "a zero or negative sleep is a busy-wait in disguise"
        self.sleeps.append(seconds)
        self.t += seconds + self._rng.uniform(0, self._oversleep_max)


def _run_for(limiter: RateLimiter, clock: SimClock, seconds: float, work_s: float) -> int:
    """Slots released within ``seconds`` of simulated time, doing ``work_s`` per slot."""
    end = clock.t + seconds
    released = 0
    while True:
        assert limiter.wait()
        if clock.t >= end:
            return released
        released += 1
        clock.t += work_s


@pytest.mark.parametrize(
    ("rate", "oversleep_max", "work_s"),
    [
        (10, 0.005, 0.002),  # the default rate, with a sloppy scheduler
        (1000, 0.0005, 0.0002),  # 1,000/s: oversleep is half an interval
        (1000, 0.0, 0.0009),  # work takes 90% of each interval
        (250.0, 0.003, 0.0),  # oversleep of most of an interval
    ],
)
def test_rate_is_within_2_percent_over_30_seconds(
    rate: float, oversleep_max: float, work_s: float
) -> None:
    clock = SimClock(oversleep_max)
    limiter = RateLimiter(rate, clock=clock, sleep=clock.sleep)
    released = _run_for(limiter, clock, 30.0, work_s)
    expected = rate * 30
    assert abs(released - expected) <= 0.02 * expected, (released, expected)
    # In fact the schedule absorbs the jitter: at most one slot off.
    assert abs(released - expected) <= 1


def test_it_sleeps_rather_than_spins() -> None:
    clock = SimClock(oversleep_max=0.001)
    limiter = RateLimiter(10, clock=clock, sleep=clock.sleep)
    released = _run_for(limiter, clock, 30.0, 0.0)
    # Roughly one sleep per slot; a spinning limiter would call the clock, not sleep,
    # thousands of times. Every sleep was positive (checked by SimClock).
    assert len(clock.sleeps) <= released + 5
    assert sum(clock.sleeps) > 29.0


def test_late_slots_are_caught_up_so_the_long_run_rate_holds() -> None:
    clock = SimClock()
    limiter = RateLimiter(10, clock=clock, sleep=clock.sleep)
    limiter.wait()
    clock.t += 0.55  # a hiccup worth five and a half slots
    sleeps_before = len(clock.sleeps)
    for _ in range(5):
        assert limiter.wait()
    assert len(clock.sleeps) == sleeps_before, "owed slots are released without waiting"
    start = clock.t
    assert limiter.wait()
    assert clock.t == pytest.approx(start + 0.05), "then the schedule resumes"


def test_a_long_stall_restarts_the_schedule_instead_of_bursting() -> None:
    clock = SimClock()
    limiter = RateLimiter(100, clock=clock, sleep=clock.sleep, max_lag_s=1.0)
    limiter.wait()
    clock.t += 10.0  # the broker was away for 10 s: 1,000 slots "owed"
    burst = 0
    while True:
        before = clock.t
        limiter.wait()
        if clock.t > before:
            break
        burst += 1
    assert burst <= 1, f"{burst} orders burst out after a stall"


def test_rate_zero_never_waits() -> None:
    clock = SimClock()
    limiter = RateLimiter(0, clock=clock, sleep=clock.sleep)
    for _ in range(10_000):
        assert limiter.wait()
    assert clock.sleeps == []


def test_rate_zero_still_reports_a_stop() -> None:
    assert RateLimiter(0).wait(should_stop=lambda: True) is False


def test_a_stop_request_interrupts_a_long_wait_within_one_chunk() -> None:
    clock = SimClock()
    limiter = RateLimiter(0.01, clock=clock, sleep=clock.sleep, max_sleep_s=0.25)
    assert limiter.wait()  # the first slot is immediate
    stop_at = clock.t + 1.0
    assert limiter.wait(should_stop=lambda: clock.t >= stop_at) is False
    assert clock.t - stop_at <= 0.25
    assert max(clock.sleeps) <= 0.25, "sleeps are chunked so stop requests are seen"


def test_the_sleep_can_be_swapped_per_call() -> None:
    clock = SimClock()
    limiter = RateLimiter(10, clock=clock, sleep=lambda _s: pytest.fail("wrong sleep"))
    polled: list[float] = []

    def poll(seconds: float) -> None:
        polled.append(seconds)
        clock.t += seconds

    for _ in range(3):
        assert limiter.wait(sleep=poll)
    assert polled == pytest.approx([0.1, 0.1])


def test_a_sleep_that_returns_early_is_simply_called_again() -> None:
    # producer.poll(timeout) returns as soon as it served a delivery report.
    clock = SimClock()
    limiter = RateLimiter(10, clock=clock)
    calls: list[float] = []

    def early(seconds: float) -> None:
        calls.append(seconds)
        clock.t += min(seconds, 0.01)

    limiter.wait(sleep=early)
    start = clock.t
    limiter.wait(sleep=early)
    assert clock.t == pytest.approx(start + 0.1)
    assert len(calls) == 10
    assert all(c > 0 for c in calls)


def test_negative_rates_are_refused() -> None:
    with pytest.raises(ValueError, match="rate"):
        RateLimiter(-1)
