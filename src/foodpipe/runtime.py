"""Interpreter settings for the consumer process, applied once its start-up is done.

Measured on the bench's 200,000-order drain with one consumer (2-core host, 2026-12-02;
``bench/results/2026-12-02-consumer-stages.md``): with CPython's defaults the cyclic garbage
collector ran ~4,400 times and spent **2.1 s of a 9.7 s drain** (33 full collections),
and the consumer's main thread used 24-38 us of CPU per order. Every validated ``Order``
is a handful of container objects that live for one batch, long enough to be promoted,
so full collections kept coming, and each one walked every object the process had
created at start-up (modules, pydantic schemas, SQLAlchemy metadata) again.

- :func:`gc.freeze` moves the start-up objects to a permanent generation that no
  collection walks. They live as long as the process anyway.
- A first-generation threshold of 10,000 allocations instead of 700: a batch of 500
  orders allocates ~7,500 tracked objects, so the collector runs about once a batch
  rather than ten times. Cycles are still collected, a batch later at most; the hot
  loop breaks its one known cycle itself (``ConsumerService._decode``).
- A GIL switch interval of 1 ms instead of 5 ms. The writer thread needs the GIL for a
  moment each time PostgreSQL answers, while the loop's thread validates the next
  batch in long stretches; with 5 ms each of those moments could wait 5 ms, and the
  database write is on the critical path of the pipeline.

With all three the main thread's CPU per order fell to ~18 us (start-up included) and
the collector ran 3 times in the whole drain. Peak RSS did not change (102-103 MiB).
"""

from __future__ import annotations

import gc
import sys

#: Allocations of container objects between two first-generation collections.
GC_GEN0_THRESHOLD = 10_000
#: Seconds a thread holds the GIL before another one waiting for it gets its turn.
SWITCH_INTERVAL_S = 0.001


def tune_for_throughput() -> None:
    """Apply the settings above to this process. Call it once, after start-up."""
    gc.collect()  # what start-up left as garbage must not be frozen with the rest
    gc.freeze()
    _gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
