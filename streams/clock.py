"""Time-driven membership changes.

Whenever the engine writes a profile it also computes, from the rules of the
tenant's active segments, the first local midnight at which any answer for
that contact will change if no event arrives (``CompiledRule.next_change``),
and files the contact under that instant in the wake-up sets. The sweep below
runs on the faust leader every ``clock_tick_seconds``: it takes the contacts
whose instant has come and sends them through the same update path with
reason ``clock``, where the changes carry that instant as ``at``.

So the work at a boundary is one read and one write per contact whose answer
changes then, and nothing for the others; a worker that was down sweeps what
fell due meanwhile when it comes back, and the wake-up of a contact whose
outbox was not yet published is due at once, so the sweep also finishes the
publication a crashed worker left half done.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from signals.store import Store
from streams.engine import Engine, Outcome

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class SweepStats:
    touched: int = 0
    changes: int = 0
    seconds: float = 0.0


class ClockSweeper:
    def __init__(self, engine: Engine, store: Store, chunk: int = 1000) -> None:
        self.engine = engine
        self.store = store
        self.chunk = chunk

    async def sweep(self) -> SweepStats:
        """Process every wake-up that is due now; returns what it did."""
        started = time.perf_counter()
        stats = SweepStats()
        now = await self.engine.now_us()
        # One look at every shard first, without the engine's lock: most
        # sweeps find nothing due, and then never hold up the ingest (taking
        # the lock once per shard had delayed a batch 16 times a sweep). A
        # wake-up counted here may be an outbox still being published; the
        # look under the lock below is the one that decides.
        counts = await self.store.due_by_shard(now)
        for shard in (s for s, n in enumerate(counts) if n):
            # Bounded: each round moves every contact it read off "due now".
            for _round in range(10_000):
                # Under the engine's lock: no update of this worker is half
                # way, so a wake-up due "now" because of an unpublished outbox
                # is a crashed writer's, not one still publishing.
                async with self.engine.exclusive():
                    due = await self.store.due(shard, now, self.chunk)
                    if not due:
                        break
                    outcome: Outcome = await self.engine.update_exclusive(
                        {ref: [] for ref, _ in due}, reason="clock"
                    )
                stats.touched += len(due)
                stats.changes += len(outcome.changes)
                if len(due) < self.chunk:
                    break
        stats.seconds = time.perf_counter() - started
        if stats.changes:
            logger.info(
                "Clock sweep: %d contacts due, %d membership changes, %.2f s",
                stats.touched,
                stats.changes,
                stats.seconds,
            )
        return stats
