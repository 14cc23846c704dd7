"""``Engine.backfill`` against the update path it shortcuts, on a real Redis.

A backfill first reads every contact as a stored document and sends through
the update path only those whose answer or wake-up the segment changes (or
whose outbox is still to publish). Whatever it passes over, the update path
would have left as it was. So for one namespace copied twice, a backfill by
``Engine.backfill`` and one by ``Engine.update(only=...)`` must publish the
same records and leave every key the same, while the look must have kept
most contacts out of the update path.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

import streams.engine
from schemas.events import Event, parse_event
from segments.registry import Registry, RegistryCache, Segment
from segments.rules import parse_spec
from signals.cache import ProfileCache
from signals.keys import ContactRef, Keys
from signals.profile import StoredState
from signals.store import Store
from signals.windows import US, to_us
from streams.engine import Clock, Engine
from tests.engine_fixtures import Sink
from tests.events import Events

pytestmark = pytest.mark.services

NOW = datetime(2026, 6, 10, 9, 30, tzinfo=UTC)
TENANT = "look"
CONTACTS = 240


def _segment(name: str, *groups: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "active",
        "rule": {"any": [{"all": g} for g in groups]},
    }


def _c(field: str, op: str, value: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"field": field, "op": op}
    if value is not None:
        out["value"] = value
    return out


#: Segments in place before the backfills: they set the contacts' wake-ups.
EXISTING = (
    _segment("clicked this week", [_c("signal.links_clicked_7d", "gte", 1)]),
    _segment(
        "silent a month", [_c("signal.last_message_from_contact", "not_in_last", 30)]
    ),
    _segment("gold", [_c("attribute.plan", "is", "gold")]),
)

#: The segments backfilled, one per round: counters, dates, attributes, OR.
BACKFILLED = (
    _segment(
        "engaged",
        [
            _c("signal.campaigns_received_30d", "gte", 2),
            _c("attribute.plan", "in", ["gold", "platinum"]),
        ],
        [_c("signal.last_link_clicked", "in_last", 14)],
    ),
    _segment(
        "lapsed readers",
        [_c("signal.last_message_read_by_contact", "not_in_last", 20)],
        [_c("signal.campaigns_read_7d", "between", [1, 2])],
    ),
)


def _history(rng: random.Random, events: Events) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for n in range(CONTACTS):
        contact = f"+1555{n:07d}"
        start = NOW - timedelta(days=60)
        out.append(
            events.updated(
                contact, start, {"plan": rng.choice(["free", "gold", "platinum"])}
            )
        )
        for _ in range(rng.randrange(0, 9)):
            at = NOW - timedelta(minutes=rng.randrange(1, 60 * 24 * 59))
            kind = rng.choice(["click", "campaign", "read", "inbound"])
            if kind == "click":
                out.append(events.click(contact, at))
            elif kind == "campaign":
                out.append(events.campaign(contact, at))
            elif kind == "read":
                out.append(events.read(contact, at, campaign="c1"))
            else:
                out.append(events.inbound(contact, at))
    return out


async def _copy_namespace(redis: Redis, source: str, target: str) -> None:
    async for key in redis.scan_iter(f"{source}:*", count=1000):
        name = key.decode() if isinstance(key, bytes) else key
        dumped = await redis.dump(name)
        assert dumped is not None
        await redis.restore(target + name[len(source) :], 0, dumped)


async def _contents(redis: Redis, prefix: str) -> dict[str, Any]:
    """Every key of a namespace by its name after the prefix, with its value."""
    out: dict[str, Any] = {}
    async for key in redis.scan_iter(f"{prefix}:*", count=1000):
        name = key.decode() if isinstance(key, bytes) else key
        kind = (await redis.type(name)).decode()
        if kind == "string":
            value: Any = await redis.get(name)
        elif kind == "hash":
            value = await redis.hgetall(name)
        elif kind == "set":
            value = sorted(await redis.smembers(name))
        elif kind == "zset":
            value = await redis.zrange(name, 0, -1, withscores=True)
        else:
            value = kind
        out[name[len(prefix) :]] = value
    return out


class _Counting(Store):
    """A store that counts the contacts the update path loads."""

    loaded = 0

    async def load(self, refs: Sequence[ContactRef]) -> Any:
        self.loaded += len(refs)
        return await super().load(refs)


async def _engine(
    redis: Redis, prefix: str, clock: Clock, cache: int = 0
) -> tuple[Engine, Sink, _Counting]:
    store = _Counting(redis, Keys(prefix))
    await store.load_scripts()
    sink = Sink()
    registry = Registry(redis, Keys(prefix), default_limit=10)
    engine = Engine(
        store,
        RegistryCache(registry),
        sink,
        clock,
        dedup_horizon_us=24 * 3600 * US,
        profiles=ProfileCache(cache),
    )
    return engine, sink, store


async def _warm(engine: Engine, store: Store, refs: list[ContactRef], seg: str) -> None:
    """Cache every profile as stored, every fifth one stale: a version behind,
    and recording the backfilled segment as joined (were the look to believe
    it, contacts that enter would be passed over)."""
    loaded = await store.load(refs)
    for n, ref in enumerate(refs):
        profile = loaded.profiles[ref]
        if n % 5 == 0:
            profile.version -= 1
            profile.membership[seg] = 1
        engine.profiles.put(ref, profile, loaded.outboxes.get(ref, b""))


@pytest.mark.parametrize("cached", [False, True], ids=["redis", "cache"])
async def test_the_look_before_a_backfill_changes_nothing_it_skips(
    redis: Redis, monkeypatch: pytest.MonkeyPatch, cached: bool
) -> None:
    decoded = 0
    real_stored_state = streams.engine.stored_state

    def counting(*args: Any) -> StoredState:
        nonlocal decoded
        decoded += 1
        return real_stored_state(*args)

    monkeypatch.setattr(streams.engine, "stored_state", counting)
    base = f"t{uuid.uuid4().hex[:8]}"
    fast_prefix, full_prefix = f"{base}f", f"{base}u"
    rng = random.Random(20261204)
    clock = Clock(manual=True)
    clock.manual_us = to_us(NOW)
    try:
        keys = Keys(base)
        registry = Registry(redis, keys, default_limit=10)
        await registry.put_tenant(TENANT, timezone="Asia/Kolkata")
        for spec in EXISTING:
            await registry.create(TENANT, parse_spec(spec))
        engine, _, _ = await _engine(redis, base, clock)
        work: dict[ContactRef, list[Event]] = {}
        for raw in _history(rng, Events(TENANT)):
            event = parse_event(orjson.dumps(raw))
            work.setdefault(ContactRef(TENANT, event.contact_id), []).append(event)
        await engine.update(work, reason="event")
        refs = sorted(work)

        moved = [timedelta(0), timedelta(days=9, hours=5)]
        for spec, later in zip(BACKFILLED, moved, strict=True):
            # The second round runs days later: many wake-ups are due then.
            clock.manual_us = to_us(NOW + later)
            segment: Segment = await registry.create(TENANT, parse_spec(spec))
            for prefix in (fast_prefix, full_prefix):
                async for key in redis.scan_iter(f"{prefix}:*", count=1000):
                    await redis.unlink(key)
                await _copy_namespace(redis, base, prefix)

            fast, fast_sink, fast_store = await _engine(
                redis, fast_prefix, clock, cache=len(refs) if cached else 0
            )
            if cached:
                await _warm(fast, fast_store, refs, segment.id)
            fast_store.loaded = decoded = 0
            fast_outcome = await fast.backfill(refs, segment)
            full, full_sink, _ = await _engine(redis, full_prefix, clock)
            full_outcome = await full.update(
                {r: [] for r in refs}, reason="definition", only=segment
            )

            assert fast_sink.records == full_sink.records
            assert sorted(c.payload()["event_id"] for c in fast_outcome.changes) == (
                sorted(c.payload()["event_id"] for c in full_outcome.changes)
            )
            assert fast_outcome.touched == full_outcome.touched == len(refs)
            assert await _contents(redis, fast_prefix) == await _contents(
                redis, full_prefix
            )
            # The test means something only if both kinds of contact occur.
            assert full_sink.records, "no contact changed: the rule tests nothing"
            assert fast_store.loaded < len(refs) / 2
            if cached:
                # The fresh entries were read from the cache, the stale decoded.
                assert len(refs) / 10 < decoded < len(refs) / 2
            else:
                assert fast_store.loaded > 0
                assert decoded > len(refs) / 2

            # Carry the namespace on with the backfill applied, for the next round.
            await engine.update(
                {r: [] for r in refs}, reason="definition", only=segment
            )
    finally:
        for prefix in (base, fast_prefix, full_prefix):
            async for key in redis.scan_iter(f"{prefix}:*", count=1000):
                await redis.unlink(key)
