"""The update path with its profile cache, against a real Redis.

Two engines share one Redis as two workers would: one keeps a profile cache,
the other writes the same contact behind its back (as a worker that took the
partition over, the leader's clock sweep or a backfill would). Nothing the
other writer did may be lost, and the cached copy may never overwrite it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from schemas.events import Event, parse_event
from segments.membership import Reason
from segments.registry import Registry, RegistryCache
from segments.rules import SegmentSpec, parse_spec
from signals.cache import ProfileCache
from signals.keys import ContactRef, Keys
from signals.store import Store
from signals.windows import US, to_us
from streams.engine import WRITE_CHUNK, Clock, Engine
from tests.engine_fixtures import Sink

pytestmark = pytest.mark.services

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
TENANT = "cache"
CONTACT = ContactRef(TENANT, "+15550001")


def click(n: int, minutes_ago: int = 5) -> Event:
    at = NOW - timedelta(minutes=minutes_ago)
    return parse_event(
        orjson.dumps(
            {
                "event_id": f"click-{n}",
                "tenant_id": TENANT,
                "contact_id": CONTACT.contact_id,
                "type": "link.clicked",
                "occurred_at": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "data": {"url": "https://shop.example/p"},
            }
        )
    )


def clicks_this_week(name: str, at_least: int) -> SegmentSpec:
    """An active segment of contacts with ``at_least`` clicks in 7 days."""
    condition = {"field": "signal.links_clicked_7d", "op": "gte", "value": at_least}
    return parse_spec(
        {"name": name, "kind": "active", "rule": {"any": [{"all": [condition]}]}}
    )


@pytest.fixture
async def engines(redis: Redis) -> AsyncIterator[tuple[Engine, Engine, Sink, Keys]]:
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    store = Store(redis, keys)
    await store.load_scripts()
    registry = Registry(redis, keys, default_limit=10)
    await registry.put_tenant(TENANT, timezone="UTC")
    await registry.create(TENANT, clicks_this_week("clicked three times", 3))
    sink = Sink()

    def engine(capacity: int) -> Engine:
        clock = Clock(manual=True)
        clock.manual_us = to_us(NOW)
        return Engine(
            store,
            RegistryCache(registry),
            sink,
            clock,
            dedup_horizon_us=24 * 3600 * US,
            profiles=ProfileCache(capacity),
        )

    yield engine(100), engine(0), sink, keys
    async for key in redis.scan_iter(f"{keys.prefix}:*"):
        await redis.unlink(key)


async def test_a_cached_profile_never_hides_another_writers_work(
    engines: tuple[Engine, Engine, Sink, Keys],
) -> None:
    cached, other, sink, _ = engines

    first = await cached.update({CONTACT: [click(1)]}, reason="event")
    assert first.written == 1
    assert cached.profiles.take([CONTACT])  # kept after the write
    # Taken out above, so this update reads Redis, and caches again.
    await cached.update({CONTACT: [click(2)]}, reason="event")
    assert len(cached.profiles) == 1

    # Another worker applies a click the cached copy has not seen.
    await other.update({CONTACT: [click(3)]}, reason="event")

    # The cached engine's next write loses the race, reads again, and counts
    # all four clicks: three from before plus this one.
    outcome = await cached.update({CONTACT: [click(4)]}, reason="event")
    assert outcome.conflicts == 1
    assert outcome.written == 1
    loaded = await cached.store.load([CONTACT])
    profile = loaded.profiles[CONTACT]
    assert sorted(profile.seen) == ["click-1", "click-2", "click-3", "click-4"]
    assert len(profile.counters["l"]) == 4

    # The third click made the contact a member, published once, by the
    # other writer; the cached engine's replay of it is a duplicate.
    entered = [r for r in sink.records if r["change"] == "entered"]
    assert [r["caused_by"] for r in entered] == ["click-3"]
    replay = await cached.update({CONTACT: [click(3)]}, reason="event")
    assert (replay.applied, replay.duplicates, replay.conflicts) == (0, 1, 0)


async def test_the_cache_reads_what_it_wrote_without_redis(
    engines: tuple[Engine, Engine, Sink, Keys], redis: Redis
) -> None:
    cached, _, sink, keys = engines
    for n in range(1, 4):
        await cached.update({CONTACT: [click(n)]}, reason="event")
    assert [r["change"] for r in sink.records] == ["entered"]
    # The stored profile and the cached copy agree field for field.
    stored = (await cached.store.load([CONTACT])).profiles[CONTACT]
    copy = cached.profiles.take([CONTACT])[CONTACT]
    assert copy.profile == stored
    assert copy.outbox == b""  # published and cleared
    assert await redis.exists(keys.outbox(CONTACT)) == 0


async def test_walks_put_back_only_what_they_took_from_the_cache(
    engines: tuple[Engine, Engine, Sink, Keys],
) -> None:
    """A backfill or a clock sweep walks contacts the ingest may not see again
    soon: caching them would push out the ones it will."""
    cached, other, _, _ = engines
    elsewhere = ContactRef(TENANT, "+15550009")
    await other.update({CONTACT: [click(1)]}, reason="event")
    await other.update({elsewhere: [click(2)]}, reason="event")
    await cached.update({CONTACT: [click(3)]}, reason="event")
    assert len(cached.profiles) == 1  # CONTACT, which it wrote

    reasons: tuple[Reason, ...] = ("definition", "clock")
    for reason in reasons:
        await cached.update({CONTACT: [], elsewhere: []}, reason=reason)
        assert cached.profiles.take([CONTACT, elsewhere]).keys() == {CONTACT}
        await cached.update({CONTACT: [click(4)]}, reason="event")  # back in


async def test_a_batch_larger_than_a_write_chunk_is_written_whole(
    engines: tuple[Engine, Engine, Sink, Keys], redis: Redis
) -> None:
    engine = engines[1]
    store = engine.store
    refs = [ContactRef(TENANT, f"+1555{n:07d}") for n in range(2 * WRITE_CHUNK + 100)]
    work = {
        ref: [
            parse_event(
                orjson.dumps(
                    {
                        "event_id": f"chunk-{ref.contact_id}-{i}",
                        "tenant_id": TENANT,
                        "contact_id": ref.contact_id,
                        "type": "link.clicked",
                        "occurred_at": (NOW - timedelta(minutes=i + 1)).strftime(
                            "%Y-%m-%dT%H:%M:%SZ"
                        ),
                        "data": {"url": "https://shop.example/p"},
                    }
                )
            )
            for i in range(3)
        ]
        for ref in refs
    }
    sent: list[tuple[int, int]] = []
    real_write = store.write

    async def write(writes: Any, wakeups: Any) -> set[ContactRef]:
        wakeups = list(wakeups)
        sent.append((len(writes), len(wakeups)))
        return await real_write(writes, wakeups)

    store.write = write  # type: ignore[method-assign]
    try:
        outcome = await engine.update(work, reason="event")
    finally:
        store.write = real_write  # type: ignore[method-assign]

    # Two full chunks went out while the batch was computed, each with its
    # contacts' wake-ups, and the rest at the end.
    assert sent == [(WRITE_CHUNK, WRITE_CHUNK), (WRITE_CHUNK, WRITE_CHUNK), (100, 100)]
    assert outcome.written == len(refs) and outcome.conflicts == 0
    loaded = await store.load(refs)
    assert {loaded.profiles[ref].version for ref in refs} == {1}
    # Each entered its segment; once published, its wake-up is the day its
    # first click leaves the 7-day window.
    assert len(engines[2].records) == len(refs)
    expected = to_us(datetime(2026, 6, 8, tzinfo=UTC))
    for ref in refs:
        score = await redis.zscore(
            engine.store.keys.wakeups(engine.store.keys.wake_shard(ref)), ref.member
        )
        assert score == expected


async def test_a_sweep_reads_past_a_cache_another_worker_made_stale(
    engines: tuple[Engine, Engine, Sink, Keys],
) -> None:
    """A clock sweep may find nothing to write, so no compare-and-set would
    catch a stale cached profile: it reads Redis. Here another worker's
    backfill records a membership the cached copy lacks; the sweep on the
    caching worker must still publish the exit the clock then causes."""
    cached, other, sink, _ = engines
    await cached.update({CONTACT: [click(1, minutes_ago=6 * 24 * 60)]}, reason="event")
    assert len(cached.profiles) == 1  # the copy from before the backfill
    week = await other.cache.registry.create(
        TENANT, clicks_this_week("clicked this week", 1)
    )
    await other.backfill([CONTACT], week)
    assert [(r["segment_id"], r["change"]) for r in sink.records] == [
        (week.id, "entered")
    ]

    # Two days on, the click has left the 7-day window.
    cached.clock.manual_us = to_us(NOW + timedelta(days=2))
    swept = await cached.update({CONTACT: []}, reason="clock")
    assert [(c.segment_id, c.change) for c in swept.changes] == [(week.id, "exited")]
