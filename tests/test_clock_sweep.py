"""The clock sweep against a real Redis: it finishes what fell due, and a
sweep that finds nothing due never waits for the engine's lock (which the
ingest holds while it applies a batch)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from redis.asyncio import Redis

from schemas.events import parse_event
from segments.registry import Registry, RegistryCache
from segments.rules import parse_spec
from signals.keys import ContactRef, Keys
from signals.store import Store
from signals.windows import US, to_us
from streams.clock import ClockSweeper
from streams.engine import Clock, Engine
from tests.engine_fixtures import Sink

pytestmark = pytest.mark.services

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
TENANT = "sweep"
CONTACT = ContactRef(TENANT, "+15550003")


@pytest.fixture
async def setup(redis: Redis) -> AsyncIterator[tuple[Engine, ClockSweeper, Sink]]:
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    store = Store(redis, keys)
    await store.load_scripts()
    registry = Registry(redis, keys, default_limit=10)
    await registry.put_tenant(TENANT, timezone="UTC")
    condition = {"field": "signal.links_clicked_7d", "op": "gte", "value": 1}
    rule = {"any": [{"all": [condition]}]}
    await registry.create(
        TENANT, parse_spec({"name": "clicked", "kind": "active", "rule": rule})
    )
    clock = Clock(manual=True)
    clock.manual_us = to_us(NOW)
    sink = Sink()
    engine = Engine(
        store, RegistryCache(registry), sink, clock, dedup_horizon_us=24 * 3600 * US
    )
    click = {
        "event_id": "click-1",
        "tenant_id": TENANT,
        "contact_id": CONTACT.contact_id,
        "type": "link.clicked",
        "occurred_at": NOW.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "data": {"url": "https://shop.example/p"},
    }
    await engine.update({CONTACT: [parse_event(orjson.dumps(click))]}, reason="event")
    yield engine, ClockSweeper(engine, store), sink
    async for key in redis.scan_iter(f"{keys.prefix}:*"):
        await redis.unlink(key)


async def test_a_sweep_with_nothing_due_does_not_wait_for_the_engine(
    setup: tuple[Engine, ClockSweeper, Sink],
) -> None:
    engine, sweeper, _ = setup
    async with engine.exclusive():  # a batch being applied
        stats = await asyncio.wait_for(sweeper.sweep(), timeout=5)
    assert stats.touched == 0


async def test_a_sweep_publishes_what_a_boundary_changed(
    setup: tuple[Engine, ClockSweeper, Sink],
) -> None:
    engine, sweeper, sink = setup
    assert [r["change"] for r in sink.records] == ["entered"]
    # Eight days on, the click has left the 7-day window.
    engine.clock.manual_us = to_us(NOW + timedelta(days=8))
    stats = await sweeper.sweep()
    assert stats.touched == 1
    assert [r["change"] for r in sink.records] == ["entered", "exited"]
    # The wake-up moved on: the next sweep finds nothing.
    assert (await sweeper.sweep()).touched == 0
