"""Walks over many chunks, on a real Redis: read-ahead keeps every contact.

Preview and snapshot read each chunk's profiles while the previous chunk is
evaluated. With chunks of three contacts, a walk over a few dozen contacts
must still see each contact exactly once and agree with evaluating every
contact on its own; a step that fails stops the walk and leaves no read
running.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from redis.asyncio import Redis

import streams.operations
from schemas.events import Event, parse_event
from segments.evaluate import compile_rule
from segments.registry import Registry, RegistryCache
from segments.rules import parse_rule, parse_spec
from signals.keys import ContactRef, Keys
from signals.store import Store
from signals.view import ContactView
from signals.windows import US, local_date_us, to_us
from streams.engine import Clock, Engine
from streams.operations import SegmentOperations
from tests.engine_fixtures import Sink
from tests.events import Events

pytestmark = pytest.mark.services

NOW = datetime(2026, 6, 10, 9, 30, tzinfo=UTC)
TENANT = "walks"
ZONE = "America/Sao_Paulo"
RULE = {
    "any": [
        {"all": [{"field": "signal.links_clicked_7d", "op": "gte", "value": 2}]},
        {"all": [{"field": "attribute.plan", "op": "is", "value": "gold"}]},
    ]
}


class _Ops:
    def __init__(self, ops: SegmentOperations, store: Store, sink: Sink) -> None:
        self.ops, self.store, self.sink = ops, store, sink


@pytest.fixture
async def walker(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[_Ops, list[ContactRef]]]:
    monkeypatch.setattr(streams.operations, "CHUNK", 3)
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    store = Store(redis, keys)
    await store.load_scripts()
    registry = Registry(redis, keys, default_limit=10)
    await registry.put_tenant(TENANT, timezone=ZONE)
    clock = Clock(manual=True)
    clock.manual_us = to_us(NOW)
    sink = Sink()
    engine = Engine(
        store, RegistryCache(registry), sink, clock, dedup_horizon_us=24 * 3600 * US
    )
    events = Events(TENANT)
    work: dict[ContactRef, list[Event]] = {}
    for n in range(41):
        contact = f"+1666{n:07d}"
        raw: list[dict[str, Any]] = [
            events.updated(
                contact, NOW - timedelta(days=20), {"plan": "gold" if n % 7 else "free"}
            )
        ]
        raw += [
            events.click(contact, NOW - timedelta(days=n % 5)) for _ in range(n % 3)
        ]
        for item in raw:
            event = parse_event(orjson.dumps(item))
            work.setdefault(ContactRef(TENANT, contact), []).append(event)
    await engine.update(work, reason="event")
    try:
        yield (
            _Ops(SegmentOperations(registry, store, engine), store, sink),
            sorted(work),
        )
    finally:
        async for key in redis.scan_iter(f"{keys.prefix}:*", count=1000):
            await redis.unlink(key)


async def _expected(store: Store, refs: Sequence[ContactRef]) -> set[str]:
    """The contacts that match ``RULE``, each evaluated on its own."""
    compiled = compile_rule(parse_rule(RULE))
    tz = ZoneInfo(ZONE)
    today = local_date_us(to_us(NOW), tz)
    out = set()
    for ref in refs:
        [view] = await store.views([ref], tz)
        if compiled.matches(view, today, tz):
            out.add(ref.contact_id)
    return out


async def test_preview_and_snapshot_over_many_chunks_see_every_contact_once(
    walker: tuple[_Ops, list[ContactRef]],
) -> None:
    w, refs = walker
    expected = await _expected(w.store, refs)
    assert 0 < len(expected) < len(refs)

    preview = await w.ops.preview(TENANT, parse_rule(RULE), limit=100)
    assert preview.contacts == len(refs)
    assert preview.entered == len(expected)
    assert sorted(preview.sample) == sorted(expected)

    spec = parse_spec({"name": "snap", "kind": "static", "rule": RULE})
    segment, snapshot = await w.ops.create(TENANT, spec)
    assert snapshot.contacts == len(refs)
    published = [r["contact_id"] for r in w.sink.records if r["reason"] == "snapshot"]
    assert sorted(published) == sorted(expected)
    members = await w.store.redis.smembers(w.store.keys.members(TENANT, segment.id))
    assert {m.decode() for m in members} == expected


async def test_a_failing_step_stops_the_walk_and_leaves_no_read_running(
    walker: tuple[_Ops, list[ContactRef]], monkeypatch: pytest.MonkeyPatch
) -> None:
    w, _ = walker
    reads = running = 0
    real_views = w.store.views

    async def views(refs: Sequence[ContactRef], tz: ZoneInfo) -> list[ContactView]:
        nonlocal reads, running
        reads += 1
        running += 1
        this = reads
        try:
            found = await real_views(refs, tz)
            if this == 3:
                raise RuntimeError("the third chunk's read fails")
            return found
        finally:
            running -= 1

    monkeypatch.setattr(w.store, "views", views)
    with pytest.raises(RuntimeError, match="third chunk"):
        await w.ops.preview(TENANT, parse_rule(RULE), limit=100)
    # No read is left running or pending. (Other tasks of the loop, such as
    # the Kafka clients of other fixtures, come and go on their own.)
    await asyncio.sleep(0)
    assert running == 0
    assert not [
        t
        for t in asyncio.all_tasks()
        if getattr(t.get_coro(), "__qualname__", "").endswith(".views")
    ]
    # The walk stopped there: its 41 contacts take 14 chunks or more.
    assert reads in (3, 4)
