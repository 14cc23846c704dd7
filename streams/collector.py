"""Python's cyclic garbage collector, run between batches instead of inside them.

Reference counting frees almost everything the update path allocates; the
cyclic collector only finds what reference cycles keep alive. Left to its
thresholds, it runs in the middle of batches, where every event, profile and
record of the batch is alive and young, so each pass walks (and promotes)
tens of thousands of objects that die a moment later. Measured with
``benchmarks/hot_path.py`` (500,000 events over 50,000 contacts): 926 young
collections took 3.1 s of a 49 s run; full collections over a worker's
profile cache paused it for 100 ms and more every couple of seconds.

So the worker freezes what is alive at start-up (modules, classes), turns
automatic collection off, and collects the young generation after every
batch, when the batch's temporaries are already gone; the middle generation
every ``MIDDLE_EVERY`` batches and everything every ``FULL_EVERY_SECONDS``,
so cyclic garbage made anywhere (asyncio, the HTTP server) is still
reclaimed. ``tick`` also runs when the worker is idle.
"""

from __future__ import annotations

import gc
import time
from typing import Final

#: Batches between collections of the middle generation.
MIDDLE_EVERY: Final = 20

#: Seconds between full collections (one pause of up to ~100 ms with a large
#: profile cache).
FULL_EVERY_SECONDS: Final = 300.0

#: Seconds after which an idle worker collects the young generation anyway.
IDLE_EVERY_SECONDS: Final = 1.0


class Collector:
    def __init__(self) -> None:
        self.batches = 0
        self._young = self._full = time.monotonic()

    def start(self) -> None:
        gc.collect()
        gc.freeze()
        gc.disable()

    def after_batch(self) -> None:
        self.batches += 1
        self._collect(1 if self.batches % MIDDLE_EVERY == 0 else 0)

    def tick(self) -> None:
        """Call now and then, busy or not (the ingest loop's every pass)."""
        now = time.monotonic()
        if now - self._full >= FULL_EVERY_SECONDS:
            self._collect(2)
        elif now - self._young >= IDLE_EVERY_SECONDS:
            self._collect(0)

    def _collect(self, generation: int) -> None:
        gc.collect(generation)
        now = time.monotonic()
        self._young = now
        if generation == 2:
            self._full = now
