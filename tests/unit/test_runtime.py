"""``foodpipe.runtime``: the consumer process's interpreter settings."""

from __future__ import annotations

import gc
import sys
import weakref
from collections.abc import Iterator

import pytest

from foodpipe import runtime


@pytest.fixture
def restored() -> Iterator[None]:
    """Give pytest's own process its settings back, whatever the test did."""
    threshold, interval = gc.get_threshold(), sys.getswitchinterval()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
        sys.setswitchinterval(interval)


@pytest.mark.usefixtures("restored")
def test_start_up_objects_are_frozen_and_the_collector_runs_less_often() -> None:
    gc.unfreeze()
    before = gc.get_threshold()
    runtime.tune_for_throughput()

    assert gc.get_freeze_count() > 0
    # Only the first generation's threshold changes; the older ones keep their ratios.
    assert gc.get_threshold() == (runtime.GC_GEN0_THRESHOLD, before[1], before[2])
    assert sys.getswitchinterval() == pytest.approx(runtime.SWITCH_INTERVAL_S)


@pytest.mark.usefixtures("restored")
def test_garbage_left_by_start_up_is_collected_not_frozen() -> None:
    gc.unfreeze()

    class Node:
        def __init__(self) -> None:
            self.me = self  # a reference cycle: only the cyclic collector frees it

    collected: list[str] = []

    node = Node()
    weakref.finalize(node, collected.append, "freed")
    del node
    runtime.tune_for_throughput()

    assert collected == ["freed"]
