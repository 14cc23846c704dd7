"""Prometheus metrics of a worker, served at ``GET /metrics``.

Counts and latencies go here, not into logs. Each worker has its own registry
(so tests and embedded uses do not share global state); gauges that are cheap
to read but change all the time (consumer lag, due wake-ups) are computed when
Prometheus scrapes.
"""

from __future__ import annotations

import bisect
from collections.abc import Awaitable, Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


def observe_many(histogram: Histogram, amounts: Iterable[float]) -> None:
    """``histogram.observe`` of every amount, with one lock per bucket, not
    per amount (the ingest observes every record of a batch: 0.8 µs each).

    Reads the client's bucket layout (``_upper_bounds``, ``_buckets``,
    ``_sum``); a client without it gets one ``observe`` per amount, and
    ``tests/test_metrics.py`` checks that both agree.
    """
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None:
        for amount in amounts:
            histogram.observe(amount)
        return
    counts = [0] * len(bounds)
    added = 0.0
    for amount in amounts:
        added += amount
        # The first bucket whose upper bound is >= amount, as observe does.
        counts[bisect.bisect_left(bounds, amount)] += 1
    total.inc(added)
    for bucket, n in zip(buckets, counts, strict=True):
        if n:
            bucket.inc(n)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_applied = Counter(
            "profilestream_events_applied_total",
            "Events folded into profiles.",
            ["tenant", "type"],
            registry=r,
        )
        self.duplicates = Counter(
            "profilestream_duplicates_suppressed_total",
            "Events whose event_id was already applied (nothing changed).",
            registry=r,
        )
        self.dead_letters = Counter(
            "profilestream_dead_letters_total",
            "Records sent to the dead-letter topic, by reason kind.",
            ["kind"],
            registry=r,
        )
        self.membership_changes = Counter(
            "profilestream_membership_changes_total",
            "Membership changes published, by reason.",
            ["reason"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "profilestream_batch_seconds",
            "Time to validate and apply one consumed batch (publishing runs after).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.event_age_seconds = Histogram(
            "profilestream_event_age_seconds",
            "From a record's Kafka timestamp to its batch being applied.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.redis_seconds = Histogram(
            "profilestream_redis_call_seconds",
            "Latency of one Redis round trip (a pipeline) of the update path.",
            ["step"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.write_conflicts = Counter(
            "profilestream_write_conflicts_total",
            "Compare-and-set writes that lost to another writer and were redone.",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "profilestream_consumer_lag",
            "Records behind the end of each assigned input partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.wakeups_due = Gauge(
            "profilestream_clock_changes_pending",
            "Contacts whose time-driven re-evaluation is due now (leader's view).",
            registry=r,
        )
        self.refreshers: list[Callable[[], Awaitable[None]]] = []

    async def render(self) -> bytes:
        for refresh in self.refreshers:
            await refresh()
        return generate_latest(self.registry)
