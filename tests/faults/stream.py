"""A seeded stream of inbound records for fault runs.

Contacts of two tenants receive every event type of contract section 1, with
ties on ``occurred_at``, arrival order shuffled, times weighted towards the
local days where the rules of ``tests.faults.rules`` change answers when the
clock turns midnight. About 5 % of the events are published a second time with
the same ``event_id`` (half of them on another input topic: any type may arrive
on any topic, and it lands on another partition, so another worker may take
it), and poison records are interleaved: every kind of invalid input that must
reach the dead-letter topic.

Nothing here talks to Kafka; ``tests.faults.cluster`` publishes the records and
notes where each one landed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

import orjson

from streams.demo import TOPIC_FOR_TYPE
from streams.kafka import INPUT_TOPICS

Json = dict[str, Any]
RecordKind = Literal["event", "duplicate", "poison"]

#: Kinds of poison, with the ``error_kind`` header the dead letter must carry.
POISON_KINDS = {
    "bad_json": "bad_json",
    "unknown_type": "unknown_type",
    "unknown_field": "unknown_field",
    "naive_time": "naive_time",
    "future_time": "future_time",
    "missing_field": "missing_field",
    "bad_tenant": "schema",
    "tombstone": "schema",
}
#: Business messages per contact stay within the exactness bound that
#: docs/design.md states for ``first_business_reply_to_last_ctwa`` (8 kept).
MAX_BUSINESS = 8


@dataclass(slots=True)
class Tenant:
    id: str
    zone: str

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.zone)


@dataclass(slots=True)
class Record:
    """One Kafka record to publish; ``partition``/``offset`` once published."""

    topic: str
    key: bytes | None
    value: bytes | None
    kind: RecordKind
    event: Json | None = None
    poison: str = ""
    partition: int = -1
    offset: int = -1

    @property
    def expected_error(self) -> str:
        return POISON_KINDS[self.poison]


@dataclass
class Stream:
    """Every record of a run, in publication order, and what they mean."""

    seed: int
    tenants: list[Tenant]
    start: datetime
    records: list[Record] = field(default_factory=list)
    contacts: dict[str, list[str]] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)
    _poison_serial: int = 0
    _extra_serial: int = 0

    @property
    def events(self) -> list[Json]:
        """Every valid event published so far, duplicates included."""
        return [r.event for r in self.records if r.event is not None]

    @property
    def poisons(self) -> list[Record]:
        return [r for r in self.records if r.kind == "poison"]

    @property
    def duplicates(self) -> int:
        return sum(r.kind == "duplicate" for r in self.records)

    def tenant(self, tenant_id: str) -> Tenant:
        return next(t for t in self.tenants if t.id == tenant_id)

    def chunks(self, count: int) -> Iterator[list[Record]]:
        """The records of ``generate`` in ``count`` roughly equal slices."""
        size = max(1, -(-len(self.records) // count))
        for i in range(0, len(self.records), size):
            yield self.records[i : i + size]

    def more_events(self, count: int) -> list[Record]:
        """Fresh valid events for existing contacts (not yet in ``records``).

        No business messages, so no contact goes past ``MAX_BUSINESS``.
        """
        out = []
        for _ in range(count):
            tenant = self.rng.choice(self.tenants)
            contact = self.rng.choice(self.contacts[tenant.id])
            builder = _Builder(self.rng, tenant, self.start)
            kind = self.rng.choice(
                ["message.inbound", "message.read", "link.clicked", "call"]
            )
            event = builder.event(
                contact, kind, _instant(self.rng, self.start, tenant.tz), {}
            )
            event["data"] = builder.data(kind)
            self._extra_serial += 1
            event["event_id"] = f"{contact}#x{self._extra_serial:05d}"
            out.append(_record(event))
        return out

    def poison_burst(self, count: int) -> list[Record]:
        """Fresh poison records (not yet in ``records``; publishing adds them)."""
        kinds = list(POISON_KINDS)
        out = []
        for _ in range(count):
            tenant = self.rng.choice(self.tenants)
            contact = self.rng.choice(self.contacts[tenant.id])
            out.append(self._poison(self.rng.choice(kinds), tenant, contact))
        return out

    def _poison(self, kind: str, tenant: Tenant, contact: str) -> Record:
        self._poison_serial += 1
        marker = f"poison-{self.seed}-{self._poison_serial}"
        event: Json = {
            "event_id": marker,
            "tenant_id": tenant.id,
            "contact_id": contact,
            "type": "link.clicked",
            "occurred_at": _rfc(self.start - timedelta(hours=1)),
            "data": {"url": f"https://poison.test/{marker}"},
        }
        topic = self.rng.choice(INPUT_TOPICS)
        key: bytes | None = f"{tenant.id}:{contact}".encode()
        value: bytes | None
        if kind == "bad_json":
            value = f'{{"event_id": "{marker}", "tenant_id": '.encode()
        elif kind == "tombstone":
            value = None
            key = f"{tenant.id}:{marker}".encode()
        else:
            if kind == "unknown_type":
                event["type"] = "link.hovered"
            elif kind == "unknown_field":
                event["data"]["colour"] = "red"
            elif kind == "naive_time":
                event["occurred_at"] = event["occurred_at"].removesuffix("Z")
            elif kind == "future_time":
                event["occurred_at"] = "2031-01-01T00:00:00Z"
            elif kind == "missing_field":
                del event["contact_id"]
            elif kind == "bad_tenant":
                event["tenant_id"] = "no spaces allowed"
            value = orjson.dumps(event)
        return Record(topic, key, value, "poison", poison=kind)


def _record(event: Json) -> Record:
    return Record(
        TOPIC_FOR_TYPE[event["type"]],
        f"{event['tenant_id']}:{event['contact_id']}".encode(),
        orjson.dumps(event),
        "event",
        event=event,
    )


def _rfc(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


#: Local days before "today" that the rules care about (7/30/90-day windows,
#: ``not_in_last 3``, ``in_last 2``), weighted up; any day up to 100 otherwise.
_HOT_DAYS = (0, 1, 2, 3, 6, 7, 29, 30, 89, 90)


def _days_ago(rng: random.Random) -> int:
    if rng.random() < 0.6:
        return rng.choice(_HOT_DAYS)
    return rng.randrange(0, 101)


def _instant(rng: random.Random, start: datetime, tz: ZoneInfo) -> datetime:
    """A whole second on a local day ``_days_ago`` before ``start``'s, never after
    ``start``."""
    day = start.astimezone(tz).date() - timedelta(days=_days_ago(rng))
    midnight = datetime(day.year, day.month, day.day, tzinfo=tz)
    at = midnight + timedelta(seconds=rng.randrange(86_400))
    return min(at.astimezone(UTC), start - timedelta(seconds=rng.randrange(1, 600)))


class _Builder:
    def __init__(self, rng: random.Random, tenant: Tenant, start: datetime) -> None:
        self.rng = rng
        self.tenant = tenant
        self.start = start
        self.serial = 0
        self.messages = 0

    def message_id(self) -> str:
        self.messages += 1
        return f"m{self.messages}"

    def event(self, contact: str, kind: str, at: datetime, data: Json) -> Json:
        self.serial += 1
        event: Json = {
            "event_id": f"{contact}#{self.serial:05d}",
            "tenant_id": self.tenant.id,
            "contact_id": contact,
            "type": kind,
            "occurred_at": _rfc(at),
            "data": data,
        }
        if self.rng.random() < 0.4:
            event["channel"] = self.rng.choice(
                ["whatsapp", "WhatsApp", "sms", "instagram", "messenger"]
            )
        return event

    def attributes(self) -> Json:
        rng = self.rng
        pool: Json = {
            "city": rng.choice(["Pune", "pune", "Delhi", "Mumbai", None]),
            "plan": rng.choice(["gold", "silver", None]),
            "score": rng.randrange(100),
            "vip": rng.random() < 0.3,
        }
        names = rng.sample(sorted(pool), rng.randint(1, len(pool)))
        return {n: pool[n] for n in names}

    def data(self, kind: str) -> Json:
        rng = self.rng
        campaign = rng.choice(["c1", "c2", "c3"])
        template = {
            "name": rng.choice(["welcome", "promo", "reminder"]),
            "type": rng.choice(["marketing", "utility"]),
        }
        data: Json
        if kind == "contact.updated":
            data = {}
            if rng.random() < 0.85:
                data["attributes"] = self.attributes()
            if rng.random() < 0.6:
                data["source"] = rng.choice(["import", "api", "Import-CSV", "form"])
        elif kind == "message.inbound":
            data = {"message_id": self.message_id()}
            roll = rng.random()
            if roll < 0.15:
                data["reply_to"] = {"message_id": "m0"}
            elif roll < 0.3:
                data["reply_to"] = {"campaign_id": campaign}
            elif roll < 0.4:
                data["reply_to"] = {"message_id": "m0", "campaign_id": campaign}
            if rng.random() < 0.2:
                data["ctwa"] = {"ad_source_url": f"https://ads.test/{rng.randrange(9)}"}
        elif kind == "message.outbound":
            data = {"message_id": self.message_id()}
            if rng.random() < 0.4:
                data["template"] = template
        elif kind == "campaign.received":
            data = {"campaign_id": campaign, "message_id": self.message_id()}
            if rng.random() < 0.5:
                data["template"] = template
        elif kind == "message.read":
            data = {"message_id": self.message_id()}
            if rng.random() < 0.5:
                data["campaign_id"] = campaign
        elif kind == "link.clicked":
            data = {"url": f"https://x.test/{rng.randrange(5)}"}
            if rng.random() < 0.5:
                data["campaign_id"] = campaign
            if rng.random() < 0.5:
                data["message_id"] = self.message_id()
        else:
            data = {
                "direction": rng.choice(["inbound", "outbound"]),
                "answered": rng.random() < 0.6,
            }
            if rng.random() < 0.5:
                data["duration_seconds"] = rng.randrange(1, 600)
        return data

    def history(self, contact: str, count: int) -> list[Json]:
        rng = self.rng
        tz = self.tenant.tz
        kinds = [
            "message.inbound",
            "message.outbound",
            "campaign.received",
            "message.read",
            "link.clicked",
            "call",
            "contact.updated",
        ]
        weights = [3, 2, 2, 2, 3, 2, 1]
        first = self.event(
            contact,
            "contact.updated",
            _instant(rng, self.start, tz),
            {"attributes": self.attributes(), "source": "import"},
        )
        out = [first]
        business = 0
        while len(out) < count:
            kind = rng.choices(kinds, weights)[0]
            if kind in ("message.outbound", "campaign.received"):
                if business >= MAX_BUSINESS:
                    continue
                business += 1
            if rng.random() < 0.05:
                at = datetime.fromisoformat(
                    rng.choice(out)["occurred_at"].replace("Z", "+00:00")
                )  # a tie on occurred_at: the event_id decides "latest"
            else:
                at = _instant(rng, self.start, tz)
            out.append(self.event(contact, kind, at, self.data(kind)))
        return out


def generate(
    seed: int,
    tenants: Sequence[Tenant],
    start: datetime,
    contacts: int,
    events_per_contact: int = 10,
    duplicate_rate: float = 0.05,
    poison_rate: float = 0.02,
) -> Stream:
    """A shuffled stream over ``contacts`` contacts split between ``tenants``."""
    rng = random.Random(seed)
    stream = Stream(seed, list(tenants), start, rng=random.Random(seed + 1))
    events: list[Json] = []
    for index in range(contacts):
        tenant = tenants[index % len(tenants)]
        contact = f"+91{index:07d}" if index % 2 == 0 else f"c-{index:05d}"
        stream.contacts.setdefault(tenant.id, []).append(contact)
        builder = _Builder(rng, tenant, start)
        count = rng.randint(2, max(3, 2 * events_per_contact - 2))
        events += builder.history(contact, count)
    rng.shuffle(events)

    records = [_record(e) for e in events]
    # Re-publish ~5 % later, byte for byte; half of them on another topic.
    for original in rng.sample(records, round(len(records) * duplicate_rate)):
        where = records.index(original) + 1
        at = rng.randrange(where, len(records) + 1)
        topic = original.topic
        if rng.random() < 0.5:
            topic = rng.choice([t for t in INPUT_TOPICS if t != original.topic])
        copy = Record(
            topic, original.key, original.value, "duplicate", event=original.event
        )
        records.insert(at, copy)
    poison_count = max(len(POISON_KINDS), round(len(records) * poison_rate))
    kinds = list(POISON_KINDS)
    for i in range(poison_count):
        tenant = tenants[i % len(tenants)]
        contact = rng.choice(stream.contacts[tenant.id])
        poison = stream._poison(kinds[i % len(kinds)], tenant, contact)
        records.insert(rng.randrange(len(records) + 1), poison)
    stream.records = records
    return stream
