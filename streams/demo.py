"""Publishing events: the topic each type usually goes to, and a sample stream.

``publish_file`` sends a JSON-lines file of events, each to the topic that
usually carries its type, keyed ``tenant:contact`` as the contract asks.
``sample_events`` is the small stream the README's demo publishes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

TOPIC_FOR_TYPE = {
    "message.inbound": "engagement.messages",
    "message.outbound": "engagement.messages",
    "message.read": "engagement.reads",
    "link.clicked": "engagement.clicks",
    "call": "engagement.calls",
    "campaign.received": "engagement.campaigns",
    "contact.updated": "contacts.updates",
}


def topic_for(event: dict[str, Any], prefix: str = "") -> str:
    return prefix + TOPIC_FOR_TYPE.get(str(event.get("type")), "engagement.messages")


def record_key(event: dict[str, Any]) -> bytes:
    return f"{event.get('tenant_id')}:{event.get('contact_id')}".encode()


async def publish(
    events: Iterable[dict[str, Any]], bootstrap: str, prefix: str = ""
) -> int:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )
    await producer.start()
    sent = 0
    try:
        for event in events:
            await producer.send(
                topic_for(event, prefix), orjson.dumps(event), key=record_key(event)
            )
            sent += 1
        await producer.flush()
    finally:
        await producer.stop()
    return sent


async def publish_file(path: str, bootstrap: str, prefix: str = "") -> int:
    lines = (await asyncio.to_thread(Path(path).read_bytes)).splitlines()
    return await publish(
        (orjson.loads(x) for x in lines if x.strip()), bootstrap, prefix
    )


def _at(now: datetime, **delta: float) -> str:
    return (now - timedelta(**delta)).strftime("%Y-%m-%dT%H:%M:%SZ")


def sample_events(
    tenant: str = "demo", now: datetime | None = None
) -> list[dict[str, Any]]:
    """A few days in the life of two contacts, ending shortly before ``now``."""
    now = now or datetime.now(UTC)

    def ev(
        n: int,
        contact: str,
        kind: str,
        ago_h: float,
        data: dict[str, Any],
        **extra: Any,
    ) -> dict[str, Any]:
        return {
            "event_id": f"demo-{n}",
            "tenant_id": tenant,
            "contact_id": contact,
            "type": kind,
            "occurred_at": _at(now, hours=ago_h),
            "data": data,
            **extra,
        }

    return [
        ev(
            1,
            "+14155550100",
            "contact.updated",
            240,
            {"attributes": {"city": "Pune", "plan": "gold"}, "source": "import"},
        ),
        ev(
            2,
            "+14155550100",
            "message.inbound",
            200,
            {"message_id": "m1", "ctwa": {"ad_source_url": "https://fb.me/ad/42"}},
            channel="whatsapp",
        ),
        ev(
            3,
            "+14155550100",
            "message.outbound",
            199.5,
            {"message_id": "m2", "template": {"name": "welcome", "type": "utility"}},
            channel="whatsapp",
        ),
        ev(
            4,
            "+14155550100",
            "campaign.received",
            48,
            {
                "campaign_id": "c-black-friday",
                "message_id": "m3",
                "template": {"name": "bf_offer", "type": "marketing"},
            },
        ),
        ev(
            5,
            "+14155550100",
            "message.read",
            47,
            {"message_id": "m3", "campaign_id": "c-black-friday"},
        ),
        ev(
            6,
            "+14155550100",
            "link.clicked",
            46.5,
            {"url": "https://shop.example/bf", "campaign_id": "c-black-friday"},
        ),
        ev(
            7,
            "+14155550100",
            "message.inbound",
            46,
            {
                "message_id": "m4",
                "reply_to": {"message_id": "m3", "campaign_id": "c-black-friday"},
            },
        ),
        ev(
            8,
            "+14155550100",
            "call",
            3,
            {"direction": "inbound", "answered": True, "duration_seconds": 95},
        ),
        ev(
            9,
            "+14155550101",
            "contact.updated",
            100,
            {"attributes": {"city": "Mumbai"}, "source": "api"},
        ),
        ev(
            10,
            "+14155550101",
            "campaign.received",
            30,
            {"campaign_id": "c-black-friday", "message_id": "m9"},
        ),
        ev(11, "+14155550101", "call", 2, {"direction": "outbound", "answered": False}),
    ]
