"""The worker's hot path in-process: validation and ``Engine.update`` only.

A quick, repeatable figure for work on the per-event cost, without Kafka in
the measurement: events of ``bench_data``'s mix (three tenants, ten active
segments each) are validated and applied in batches, as ``streams.ingest``
does, against the Redis at ``$REDIS_URL``. Membership records are encoded as
the publisher encodes them and then dropped. Prints events/s and CPU
microseconds per event for each pass over the data (the first pass creates
the contacts, the later ones update them), and with ``--profile`` the
functions that took the most time.

    eval "$(python3 scripts/services.py env)"
    .venv/bin/python benchmarks/hot_path.py --events 40000 --contacts 4000

``benchmarks/run.py`` remains the benchmark of record (Kafka, baselines,
latency, memory); this one is for comparing two versions of the code.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import hashlib
import os
import pstats
import statistics
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import orjson
from bench_data import EVAL_RULE, SEGMENTS, TENANTS, PartSpec, eval_spec, part_events

from schemas.events import Event, parse_event
from segments.registry import Registry, RegistryCache
from segments.rules import parse_rule, parse_spec
from signals.cache import ProfileCache
from signals.keys import ContactRef, Keys
from signals.redis_client import connect
from signals.store import Store
from signals.windows import US
from streams.collector import Collector
from streams.engine import Clock, Engine
from streams.operations import SegmentOperations


class EncodingSink:
    """Encodes membership records as ``streams.kafka.Publisher`` does, and
    keeps a digest of what they say, to compare two versions of the code."""

    def __init__(self) -> None:
        self.records = 0
        self.names: dict[str, str] = {}
        self._seen: list[tuple[str, ...]] = []

    async def publish_membership(self, records: Sequence[dict[str, Any]]) -> None:
        for r in records:
            f"{r['tenant_id']}:{r['contact_id']}".encode()
            orjson.dumps(r)
            self._seen.append(
                (
                    r["tenant_id"],
                    r["contact_id"],
                    self.names.get(r["segment_id"], r["segment_id"]),
                    r["change"],
                    r["reason"],
                    str(r["caused_by"]),
                )
            )
        self.records += len(records)

    def digest(self) -> str:
        return hashlib.sha256(repr(sorted(self._seen)).encode()).hexdigest()[:12]


async def drain(
    engine: Engine, values: list[bytes], batch: int, collector: Collector
) -> None:
    for start in range(0, len(values), batch):
        work: dict[ContactRef, list[Event]] = defaultdict(list)
        for value in values[start : start + batch]:
            event = parse_event(value)
            work[ContactRef(event.tenant_id, event.contact_id)].append(event)
        await engine.update(work, reason="event")
        del work  # dead before the collector runs, as in the worker
        collector.after_batch()


async def walks(
    ops: SegmentOperations, profiler: cProfile.Profile | None
) -> dict[str, float]:
    """Contacts/s of preview, backfill and snapshot over every tenant."""
    rates: dict[str, float] = {}
    for what in ("preview", "backfill", "snapshot"):
        contacts, seconds = 0, 0.0
        cpu = time.process_time()
        if profiler:
            profiler.enable()
        for tenant in TENANTS:
            if what == "preview":
                report = await ops.preview(tenant.id, parse_rule(EVAL_RULE), 10)
            else:
                kind = "active" if what == "backfill" else "static"
                _, report = await ops.create(tenant.id, parse_spec(eval_spec(kind, 0)))
            contacts += report.contacts
            seconds += report.seconds
        if profiler:
            profiler.disable()
        rates[what] = contacts / seconds
        cpu = time.process_time() - cpu
        print(
            f"{what}: {contacts:,} contacts in {seconds:.2f} s, "
            f"{cpu / contacts * 1e6:.1f} µs CPU/contact"
        )
    return rates


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--contacts", type=int, default=4_000)
    parser.add_argument("--batch", type=int, default=2_000)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--walks",
        action="store_true",
        help="then time preview, backfill and snapshot over all contacts "
        "(with --profile, profile those instead of the last pass)",
    )
    parser.add_argument(
        "--cache", type=int, default=50_000, help="profile cache capacity (contacts)"
    )
    args = parser.parse_args()

    redis = connect(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    prefix = f"hot{uuid.uuid4().hex[:6]}"
    keys = Keys(prefix)
    store = Store(redis, keys)
    await store.load_scripts()
    registry = Registry(redis, keys, default_limit=12)
    sink = EncodingSink()
    for tenant in TENANTS:
        await registry.put_tenant(tenant.id, timezone=tenant.timezone)
        for spec in SEGMENTS:
            segment = await registry.create(tenant.id, parse_spec(spec))
            sink.names[segment.id] = segment.name
    engine = Engine(
        store,
        RegistryCache(registry),
        sink,
        Clock(manual=False),
        dedup_horizon_us=24 * 3600 * US,
        profiles=ProfileCache(args.cache),
    )
    # Whole days, so that two runs on one day see the same windows.
    now_us = time.time_ns() // 1000 // (86_400 * US) * 86_400 * US
    passes = []
    for n in range(args.passes):
        part = PartSpec("", "", f"r{n}", 0, 1, args.events, args.contacts, now_us)
        passes.append([orjson.dumps(e) for e in part_events(part)])

    collector = Collector()
    collector.start()  # as the worker does
    profiler = cProfile.Profile() if args.profile else None
    rates, cpu = [], []
    try:
        for n, values in enumerate(passes):
            if profiler and not args.walks and n == len(passes) - 1:
                profiler.enable()
            wall, proc = time.perf_counter(), time.process_time()
            await drain(engine, values, args.batch, collector)
            wall, proc = time.perf_counter() - wall, time.process_time() - proc
            if profiler:
                profiler.disable()
            rates.append(len(values) / wall)
            cpu.append(proc / len(values) * 1e6)
            print(
                f"pass {n + 1}: {len(values):,} events in {wall:.2f} s, "
                f"{rates[-1]:,.0f} events/s, {cpu[-1]:.1f} µs CPU/event"
            )
        later = rates[1:] or rates
        print(
            f"updates (passes 2+): median {statistics.median(later):,.0f} events/s, "
            f"{statistics.median(cpu[1:] or cpu):.1f} µs CPU/event; "
            f"membership records: {sink.records:,} (digest {sink.digest()}); "
            "profile cache hits "
            f"{engine.profiles.hits:,}, misses {engine.profiles.misses:,}"
        )
        if args.walks:
            ops = SegmentOperations(registry, store, engine)
            rates_by_walk = await walks(ops, profiler)
            print(
                "walks over all contacts: "
                + ", ".join(
                    f"{k} {v:,.0f} contacts/s" for k, v in rates_by_walk.items()
                )
            )
        if profiler:
            stats = pstats.Stats(profiler)
            stats.sort_stats("tottime").print_stats(25)
    finally:
        async for key in redis.scan_iter(f"{prefix}:*", count=1000):
            await redis.unlink(key)
        await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main())
