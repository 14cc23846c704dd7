"""Python's cyclic garbage collector, run between batches instead of inside them.

Reference counting frees almost everything the update path allocates; the
cyclic collector only finds what reference cycles keep alive, and in the
worker that is next to nothing (``benchmarks/hot_path.py``, 400,000 events:
64 objects in all). Left to its thresholds, it runs in the middle of batches,
where every event, profile and record of the batch is alive and young, so
each pass walks (and promotes) tens of thousands of objects that die a
moment later; and every pass over the older generations walks the whole
profile cache again, which paused the worker for 100 ms and more.

So the worker turns automatic collection off and, after every batch (when
the batch's temporaries are gone), collects the young generation and then
*freezes* what survived it (``gc.freeze``): the cached profiles and the rest
are walked once, young, and never again by the routine passes, which stay as
small as one batch's survivors. Every ``FULL_EVERY_SECONDS`` the frozen
objects are thawed and everything is collected once, so a cycle that became
garbage after it was frozen (asyncio, the HTTP server, a reconnect) is
reclaimed then: later, never lost. ``tick`` also runs when the worker is idle.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Final

logger = logging.getLogger(__name__)

#: Seconds between full collections (the one pass over every object; about
#: 50 ms with a 50,000-profile cache, measured with ``hot_path.py``).
FULL_EVERY_SECONDS: Final = 300.0

#: Seconds after which an idle worker collects the young generation anyway.
IDLE_EVERY_SECONDS: Final = 1.0


class Collector:
    def __init__(self) -> None:
        self.batches = 0
        self._young = self._full = time.monotonic()

    def start(self) -> None:
        gc.disable()
        self._collect_all()

    def after_batch(self) -> None:
        self.batches += 1
        self._collect_young()

    def tick(self) -> None:
        """Call now and then, busy or not (the ingest loop's every pass)."""
        now = time.monotonic()
        if now - self._full >= FULL_EVERY_SECONDS:
            self._collect_all()
        elif now - self._young >= IDLE_EVERY_SECONDS:
            self._collect_young()

    def _collect_young(self) -> None:
        gc.collect(0)
        gc.freeze()
        self._young = time.monotonic()

    def _collect_all(self) -> None:
        started = time.perf_counter()
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        self._young = self._full = time.monotonic()
        logger.debug(
            "Full garbage collection: %d unreachable objects, %.1f ms",
            found,
            (time.perf_counter() - started) * 1000,
        )
