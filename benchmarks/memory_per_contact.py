"""Redis memory per contact after 90 days of a realistic event mix.

Runs the worker's own update path (``streams.engine.Engine``) in-process
against the Redis at $REDIS_URL, day by day over 90 simulated days, for
``--contacts`` contacts of one tenant with ten active segments, then reports
``MEMORY USAGE`` of every key the contacts own (profile, wake-up entries) and
the growth of ``used_memory``. Membership records go to a sink that counts
them: this benchmark measures Redis, not Kafka.

The mix per contact and 90 days (about 60 events): 13 campaigns (one a week)
with 8 reads, 4 link clicks and 2 campaign replies; 12 inbound and 12 outbound
messages, half of the outbound with a template; 2 calls; 2 contact updates
with 4 attributes; one click-to-WhatsApp conversation for a third of them.

    python benchmarks/memory_per_contact.py --contacts 5000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from redis.asyncio import Redis

from schemas.events import Event, parse_event
from segments.registry import Registry, RegistryCache
from segments.rules import parse_spec
from signals.keys import WAKE_SHARDS, ContactRef, Keys
from signals.store import Store
from signals.windows import US, to_us
from streams.engine import Clock, Engine

SEGMENTS: list[tuple[str, list[tuple[str, str, object]]]] = [
    ("clicked 7d", [("signal.links_clicked_7d", "gte", 1)]),
    ("no reply 30d", [("signal.last_message_from_contact", "not_in_last", 30)]),
    (
        "engaged",
        [
            ("signal.campaigns_read_30d", "gte", 2),
            ("signal.campaigns_replied_90d", "gte", 1),
        ],
    ),
    ("pune", [("attribute.city", "is", "Pune")]),
    ("gold", [("attribute.plan", "in", ["gold", "platinum"])]),
    ("ctwa", [("signal.last_ctwa_message_at", "in_last", 30)]),
    ("called", [("signal.last_answered_inbound_call", "in_last", 14)]),
    ("signup month", [("attribute.signup", "day_in_this_month", None)]),
    ("heavy", [("signal.campaigns_received_30d", "between", [3, 6])]),
    ("marketing", [("signal.last_template_type", "is", "marketing")]),
]


class CountingSink:
    def __init__(self) -> None:
        self.records = 0

    async def publish_membership(self, records: Sequence[dict[str, Any]]) -> None:
        self.records += len(records)


def history(
    tenant: str,
    contact: str,
    start: datetime,
    rng: random.Random,
) -> list[dict[str, Any]]:
    def at(day: float) -> str:
        return (start + timedelta(days=day)).strftime("%Y-%m-%dT%H:%M:%SZ")

    def ev(kind: str, day: float, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "event_id": str(uuid.uuid4()),
            "tenant_id": tenant,
            "contact_id": contact,
            "type": kind,
            "occurred_at": at(day),
            "data": data,
            "channel": "whatsapp",
        }

    out = []
    for week in range(13):
        day = week * 7 + rng.random() * 6
        out.append(
            ev(
                "campaign.received",
                day,
                {
                    "campaign_id": f"c{week}",
                    "message_id": f"m{week}",
                    "template": {"name": f"promo_{week}", "type": "marketing"},
                },
            )
        )
        if week < 8:
            out.append(
                ev(
                    "message.read",
                    day + 0.1,
                    {"message_id": f"m{week}", "campaign_id": f"c{week}"},
                )
            )
        if week < 4:
            out.append(
                ev(
                    "link.clicked",
                    day + 0.2,
                    {"url": "https://shop.example/p", "campaign_id": f"c{week}"},
                )
            )
        if week < 2:
            out.append(
                ev(
                    "message.inbound",
                    day + 0.3,
                    {"message_id": f"r{week}", "reply_to": {"campaign_id": f"c{week}"}},
                )
            )
    for i in range(12):
        day = rng.random() * 89
        out.append(ev("message.inbound", day, {"message_id": f"i{i}"}))
        template = {"name": "reply", "type": "utility"} if i % 2 else None
        data: dict[str, Any] = {"message_id": f"o{i}"}
        if template:
            data["template"] = template
        out.append(ev("message.outbound", day + 0.01, data))
    for i in range(2):
        out.append(
            ev("call", rng.random() * 89, {"direction": "inbound", "answered": i == 0})
        )
    out.append(
        ev(
            "contact.updated",
            0.5,
            {
                "attributes": {
                    "city": rng.choice(["Pune", "Mumbai", "Delhi"]),
                    "plan": "gold",
                    "signup": "2025-03-14",
                    "language": "en",
                },
                "source": "import",
            },
        )
    )
    out.append(ev("contact.updated", 45, {"attributes": {"plan": "platinum"}}))
    if rng.random() < 1 / 3:
        out.append(
            ev(
                "message.inbound",
                60,
                {"message_id": "ad", "ctwa": {"ad_source_url": "https://fb.me/ad/1"}},
            )
        )
        out.append(ev("message.outbound", 60.01, {"message_id": "ad-reply"}))
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=5000)
    args = parser.parse_args()
    redis = Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    namespace = f"bench{uuid.uuid4().hex[:6]}"
    keys = Keys(namespace)
    store = Store(redis, keys)
    await store.load_scripts()
    registry = Registry(redis, keys, default_limit=10)
    tenant = "t1"
    await registry.put_tenant(tenant, timezone="Asia/Kolkata")
    for name, conditions in SEGMENTS:
        spec = parse_spec(
            {
                "name": name,
                "kind": "active",
                "rule": {
                    "any": [
                        {
                            "all": [
                                {
                                    "field": f,
                                    "op": o,
                                    **({} if v is None else {"value": v}),
                                }
                                for f, o, v in conditions
                            ]
                        }
                    ]
                },
            }
        )
        await registry.create(tenant, spec)
    clock = Clock(manual=True)
    sink = CountingSink()
    engine = Engine(
        store, RegistryCache(registry), sink, clock, dedup_horizon_us=24 * 3600 * US
    )

    rng = random.Random(1)
    start = datetime(2026, 9, 1, tzinfo=UTC)
    by_day: dict[int, list[Event]] = {}
    total = 0
    for n in range(args.contacts):
        for raw in history(tenant, f"+9198{n:08d}", start, rng):
            event = parse_event(orjson.dumps(raw))
            day = int((event.occurred_at - start).total_seconds() // 86400)
            by_day.setdefault(day, []).append(event)
            total += 1
    before = int((await redis.info("memory"))["used_memory"])
    started = time.perf_counter()
    for day in range(91):
        clock.manual_us = to_us(start + timedelta(days=day + 1))
        todays = sorted(by_day.get(day, []), key=lambda e: e.occurred_at)
        for i in range(0, len(todays), 2000):
            work: dict[ContactRef, list[Event]] = {}
            for event in todays[i : i + 2000]:
                work.setdefault(ContactRef(tenant, event.contact_id), []).append(event)
            await engine.update(work, reason="event")
    elapsed = time.perf_counter() - started
    after = int((await redis.info("memory"))["used_memory"])

    sizes = []
    for n in range(0, args.contacts, max(1, args.contacts // 500)):
        ref = ContactRef(tenant, f"+9198{n:08d}")
        sizes.append(int(await redis.memory_usage(keys.contact(ref)) or 0))
    wake = sum(
        [
            int(await redis.memory_usage(keys.wakeups(s)) or 0)
            + int(await redis.memory_usage(keys.wake_versions(s)) or 0)
            for s in range(WAKE_SHARDS)
        ]
    )
    index = int(await redis.memory_usage(keys.tenant_contacts(tenant)) or 0)
    members = 0
    async for key in redis.scan_iter(f"{namespace}:m:*"):
        members += int(await redis.memory_usage(key) or 0)

    per_contact_keys = statistics.median(sizes)
    shared = (wake + index + members) / args.contacts
    print(
        f"contacts: {args.contacts}, events: {total} "
        f"({total / args.contacts:.1f} per contact), applied in {elapsed:.1f} s "
        f"({total / elapsed:,.0f} events/s in-process)"
    )
    print(f"membership records: {sink.records}")
    print(
        f"profile key MEMORY USAGE: median {per_contact_keys:.0f} B, "
        f"p90 {statistics.quantiles(sizes, n=10)[-1]:.0f} B"
    )
    print(f"wake-ups + contact index + member sets: {shared:.0f} B per contact")
    print(f"total per contact (keys): {per_contact_keys + shared:.0f} B")
    print(f"used_memory growth per contact: {(after - before) / args.contacts:.0f} B")

    async for key in redis.scan_iter(f"{namespace}:*"):
        await redis.delete(key)
    await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main())
