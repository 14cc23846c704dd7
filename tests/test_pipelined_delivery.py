"""Pipelined deliveries against a real Redis: a batch of events is applied
while the previous batch's membership records are still being published, and
nothing is published out of order, twice, or not at all.

The sink holds every publish until the test opens its gate, so a delivery
stays in flight for as long as a test needs.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from schemas.events import Event, parse_event
from segments.registry import Registry, RegistryCache
from segments.rules import parse_spec
from signals.keys import ContactRef, Keys
from signals.store import Store
from signals.windows import US, to_us
from streams.clock import ClockSweeper
from streams.engine import Clock, Engine
from streams.kafka import KafkaUnavailableError
from streams.retry import RetryPolicy

pytestmark = pytest.mark.services

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
TENANT = "pipe"
ALICE = ContactRef(TENANT, "+15550101")
BOB = ContactRef(TENANT, "+15550102")


class GatedSink:
    """Keeps membership records, publishing only once the gate is open; the
    first ``failures`` publishes raise ``error`` instead."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.records: list[dict[str, Any]] = []
        self.failures = 0
        self.error: Exception = KafkaUnavailableError("broker away")
        self.attempts = 0

    async def publish_membership(self, records: Sequence[dict[str, Any]]) -> None:
        self.attempts += 1
        await self.gate.wait()
        if self.failures:
            self.failures -= 1
            raise self.error
        self.records += records

    def changes(self, ref: ContactRef) -> list[str]:
        return [r["change"] for r in self.records if r["contact_id"] == ref.contact_id]


@dataclass
class Setup:
    engine: Engine
    store: Store
    sink: GatedSink
    sweeper: ClockSweeper


@pytest.fixture
async def setup(redis: Redis) -> AsyncIterator[Setup]:
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    store = Store(redis, keys)
    await store.load_scripts()
    registry = Registry(redis, keys, default_limit=10)
    await registry.put_tenant(TENANT, timezone="UTC")
    gold = {"field": "attribute.plan", "op": "is", "value": "gold"}
    await registry.create(
        TENANT,
        parse_spec(
            {"name": "gold", "kind": "active", "rule": {"any": [{"all": [gold]}]}}
        ),
    )
    clock = Clock(manual=True)
    clock.manual_us = to_us(NOW)
    sink = GatedSink()
    engine = Engine(
        store,
        RegistryCache(registry),
        sink,
        clock,
        dedup_horizon_us=24 * 3600 * US,
        retry=RetryPolicy(initial_seconds=0.01, max_seconds=0.02),
    )
    yield Setup(engine, store, sink, ClockSweeper(engine, store))
    sink.gate.set()
    await engine.delivered()
    async for key in redis.scan_iter(f"{keys.prefix}:*"):
        await redis.unlink(key)


def plan(ref: ContactRef, value: str, n: int) -> Event:
    return parse_event(
        orjson.dumps(
            {
                "event_id": f"{ref.contact_id}-{n}",
                "tenant_id": TENANT,
                "contact_id": ref.contact_id,
                "type": "contact.updated",
                "occurred_at": f"2026-06-01T11:00:{n:02d}Z",
                "data": {"attributes": {"plan": value}},
            }
        )
    )


async def stored(setup: Setup, ref: ContactRef) -> tuple[int, bool]:
    """The contact's stored version, and whether an outbox waits in Redis."""
    loaded = await setup.store.load([ref])
    return loaded.profiles[ref].version, ref in loaded.outboxes


async def test_a_batch_is_applied_before_its_records_are_published(
    setup: Setup,
) -> None:
    outcome, delivery = await setup.engine.apply_events(
        {ALICE: [plan(ALICE, "gold", 1)]}
    )
    assert [c.change for c in outcome.changes] == ["entered"]
    await asyncio.sleep(0.05)
    assert not delivery.done()
    assert setup.sink.records == []
    assert await stored(setup, ALICE) == (1, True)  # durable, waiting for Kafka

    setup.sink.gate.set()
    await asyncio.wait_for(delivery, 5)
    assert setup.sink.changes(ALICE) == ["entered"]
    assert outcome.published == 1
    assert await stored(setup, ALICE) == (1, False)


async def test_the_next_batch_is_applied_while_the_last_is_delivered(
    setup: Setup,
) -> None:
    engine = setup.engine
    _, first = await engine.apply_events({ALICE: [plan(ALICE, "gold", 1)]})
    second = asyncio.create_task(engine.apply_events({BOB: [plan(BOB, "gold", 1)]}))
    # Bob is written while Alice's record waits for Kafka...
    for _ in range(100):
        if (await stored(setup, BOB))[0] == 1:
            break
        await asyncio.sleep(0.02)
    assert await stored(setup, BOB) == (1, True)
    # ...and his delivery waits for hers: one at a time, in batch order.
    assert not first.done() and not second.done()
    setup.sink.gate.set()
    _, bob_delivery = await asyncio.wait_for(second, 5)
    await asyncio.wait_for(bob_delivery, 5)
    assert first.done()
    assert [r["contact_id"] for r in setup.sink.records] == [
        ALICE.contact_id,
        BOB.contact_id,
    ]


async def test_a_contact_being_delivered_waits_for_its_delivery(
    setup: Setup,
) -> None:
    engine = setup.engine
    await engine.apply_events({ALICE: [plan(ALICE, "gold", 1)]})
    second = asyncio.create_task(engine.apply_events({ALICE: [plan(ALICE, "free", 2)]}))
    await asyncio.sleep(0.2)
    # Not loaded while its outbox is in flight: it would publish "entered" again.
    assert await stored(setup, ALICE) == (1, True)
    assert not second.done()
    setup.sink.gate.set()
    _, delivery = await asyncio.wait_for(second, 5)
    await asyncio.wait_for(delivery, 5)
    assert setup.sink.changes(ALICE) == ["entered", "exited"]
    assert await stored(setup, ALICE) == (2, False)


async def test_a_sweep_waits_for_the_delivery_in_flight(setup: Setup) -> None:
    engine = setup.engine
    await engine.apply_events({ALICE: [plan(ALICE, "gold", 1)]})
    # The outbox makes the contact's wake-up due at once, as a crashed writer's.
    sweep = asyncio.create_task(setup.sweeper.sweep())
    await asyncio.sleep(0.2)
    assert not sweep.done()
    setup.sink.gate.set()
    stats = await asyncio.wait_for(sweep, 5)
    assert stats.changes == 0
    assert setup.sink.changes(ALICE) == ["entered"]


async def test_a_delivery_retries_while_kafka_is_away(setup: Setup) -> None:
    setup.sink.failures = 2
    setup.sink.gate.set()
    _, delivery = await setup.engine.apply_events({ALICE: [plan(ALICE, "gold", 1)]})
    await asyncio.wait_for(delivery, 5)
    assert setup.sink.attempts == 3
    assert setup.sink.changes(ALICE) == ["entered"]
    assert await stored(setup, ALICE) == (1, False)


async def test_a_delivery_that_fails_for_good_leaves_its_records_to_the_sweep(
    setup: Setup,
) -> None:
    setup.sink.failures = 1
    setup.sink.error = ValueError("a record Kafka refuses")
    setup.sink.gate.set()
    _, delivery = await setup.engine.apply_events({ALICE: [plan(ALICE, "gold", 1)]})
    await asyncio.wait_for(delivery, 5)  # logged, not raised
    assert setup.sink.records == []
    assert await stored(setup, ALICE) == (1, True)
    # Nothing is lost: the outbox is due at once, and the sweep publishes it.
    stats = await setup.sweeper.sweep()
    assert stats.touched == 1
    assert setup.sink.changes(ALICE) == ["entered"]
    assert await stored(setup, ALICE) == (1, False)
