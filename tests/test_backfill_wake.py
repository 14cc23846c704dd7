"""A backfill moves only its own segment's wake-up, against a real Redis.

A backfill evaluates one segment for every contact. The other segments'
answers are not recorded again, so the contact's wake-up instant may only
move for the backfilled segment: a wake-up that is already due (a day
boundary passed, the clock sweep not yet run) must stay due, or the other
segments' clock changes would be lost.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from schemas.events import parse_event
from segments.registry import Registry, RegistryCache
from segments.rules import parse_spec
from signals.keys import ContactRef, Keys
from signals.store import Store
from signals.windows import US, to_us
from streams.engine import Clock, Engine
from tests.engine_fixtures import Sink

pytestmark = pytest.mark.services

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
TENANT = "wake"
CONTACT = ContactRef(TENANT, "+15550002")


def spec(name: str, field: str, op: str, value: Any) -> dict[str, Any]:
    condition = {"field": field, "op": op, "value": value}
    return {"name": name, "kind": "active", "rule": {"any": [{"all": [condition]}]}}


async def test_a_backfill_leaves_a_due_wake_up_of_another_segment_due(
    redis: Redis,
) -> None:
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    store = Store(redis, keys)
    await store.load_scripts()
    registry = Registry(redis, keys, default_limit=10)
    await registry.put_tenant(TENANT, timezone="UTC")
    clicked = await registry.create(
        TENANT,
        parse_spec(spec("clicked this week", "signal.links_clicked_7d", "gte", 1)),
    )
    clock = Clock(manual=True)
    clock.manual_us = to_us(NOW)
    sink = Sink()
    engine = Engine(
        store, RegistryCache(registry), sink, clock, dedup_horizon_us=24 * 3600 * US
    )
    try:
        click = {
            "event_id": "click-1",
            "tenant_id": TENANT,
            "contact_id": CONTACT.contact_id,
            "type": "link.clicked",
            "occurred_at": NOW.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "data": {"url": "https://shop.example/p"},
        }
        await engine.update(
            {CONTACT: [parse_event(orjson.dumps(click))]}, reason="event"
        )
        assert [(r["segment_id"], r["change"]) for r in sink.records] == [
            (clicked.id, "entered")
        ]
        # Eight days later the click has left the 7-day window; the sweep has
        # not run yet, so the contact's wake-up is due.
        later = to_us(NOW + timedelta(days=8))
        clock.manual_us = later
        assert await store.due_count(later) == 1

        plan = await registry.create(
            TENANT, parse_spec(spec("gold plan", "attribute.plan", "is", "gold"))
        )
        backfill = await engine.update({CONTACT: []}, reason="definition", only=plan)
        assert backfill.changes == []
        assert await store.due_count(later) == 1

        # The sweep then publishes the exit the boundary caused.
        swept = await engine.update({CONTACT: []}, reason="clock")
        assert [(c.segment_id, c.change) for c in swept.changes] == [
            (clicked.id, "exited")
        ]
    finally:
        async for key in redis.scan_iter(f"{keys.prefix}:*"):
            await redis.unlink(key)
