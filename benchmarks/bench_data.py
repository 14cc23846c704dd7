"""The data of ``benchmarks/run.py``: tenants, segments, events, publishing.

**Events.** Every contact gets one ``contact.updated`` with its attributes
(city, plan, signup date, language); the other events are spread uniformly at
random over the contacts, with this mix of types (weights): campaign received
22, campaign/message read 14, link clicked 7, inbound message 22 (15 % of them
replies to a campaign, 5 % click-to-WhatsApp), outbound message 22 (half with
a template), call 4, further contact update 4. ``occurred_at`` is uniform over
the 90 days before the run; each publisher sends its share in time order, as a
replayed stream would arrive. Topic per type and record key as
``streams.demo`` (the contract's defaults).

**Tenants.** Three, of 50 %, 30 % and 20 % of the contacts, in three time
zones, each with the same ten active segments: a mix of the contract's
operators (counters ``gte``/``between``, dates ``in_last``/``not_in_last``,
attribute ``is``/``in``/``day_in_this_month``, strings ``contains``/
``starts_with``/``is_not``, AND and OR).
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import random
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from streams.demo import record_key, topic_for
from streams.kafka import INPUT_TOPICS


@dataclass(frozen=True)
class Tenant:
    id: str
    timezone: str
    share: float


TENANTS = (
    Tenant("acme", "Asia/Kolkata", 0.5),
    Tenant("globex", "America/Sao_Paulo", 0.3),
    Tenant("initech", "UTC", 0.2),
)

CITIES = ("Pune", "Mumbai", "Delhi", "Bengaluru", "Chennai", "Sao Paulo")
PLANS = ("free", "free", "gold", "platinum")
CHANNELS = ("whatsapp",) * 16 + ("instagram", "instagram", "messenger", "sms")
SOURCES = ("import", "api", "crm", "ctwa_ad")


def _cond(field: str, op: str, value: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"field": field, "op": op}
    if value is not None:
        out["value"] = value
    return out


def _segment(name: str, *groups: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "active",
        "rule": {"any": [{"all": g} for g in groups]},
    }


#: The ten active segments of every tenant.
SEGMENTS: tuple[dict[str, Any], ...] = (
    _segment("Clicked this week", [_cond("signal.links_clicked_7d", "gte", 1)]),
    _segment(
        "Silent for 30 days",
        [_cond("signal.last_message_from_contact", "not_in_last", 30)],
    ),
    _segment(
        "Engaged with campaigns",
        [
            _cond("signal.campaigns_read_30d", "gte", 2),
            _cond("signal.campaigns_replied_90d", "gte", 1),
        ],
    ),
    _segment("Pune", [_cond("attribute.city", "is", "Pune")]),
    _segment("Paying", [_cond("attribute.plan", "in", ["gold", "platinum"])]),
    _segment(
        "Came from an ad",
        [_cond("signal.last_ctwa_message_at", "in_last", 30)],
        [_cond("signal.contact_source", "starts_with", "ctwa")],
    ),
    _segment(
        "Signup anniversary month",
        [_cond("attribute.signup", "day_in_this_month")],
    ),
    _segment(
        "Regular campaign receivers",
        [_cond("signal.campaigns_received_30d", "between", [3, 6])],
    ),
    _segment(
        "Promo template, not on SMS",
        [
            _cond("signal.last_template_used", "contains", "promo"),
            _cond("signal.channel_type", "is_not", "sms"),
        ],
    ),
    _segment(
        "Answered a call lately",
        [
            _cond("signal.last_answered_inbound_call", "in_last", 14),
            _cond("signal.last_inbound_call", "is_set"),
        ],
    ),
)

#: The rule previewed, backfilled and snapshotted in the evaluation figures.
EVAL_RULE: dict[str, Any] = {
    "any": [
        {
            "all": [
                _cond("signal.campaigns_received_90d", "gte", 2),
                _cond("attribute.plan", "in", ["gold", "platinum"]),
            ]
        },
        {"all": [_cond("signal.last_link_clicked", "in_last", 14)]},
    ]
}


def eval_spec(kind: str, n: int) -> dict[str, Any]:
    rule = orjson.loads(orjson.dumps(EVAL_RULE))
    # A different threshold per repeat, so each creation is a new definition.
    rule["any"][0]["all"][0]["value"] = 2 + n
    return {"name": f"bench {kind} {n}", "kind": kind, "rule": rule}


def tenant_of(index: int, contacts: int) -> Tenant:
    bound = 0.0
    for tenant in TENANTS:
        bound += tenant.share * contacts
        if index < bound:
            return tenant
    return TENANTS[-1]


def contact_id(index: int) -> str:
    return f"+91{index:010d}"


def rfc(us: int) -> str:
    return (
        datetime.fromtimestamp(us / 1e6, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


class EventMaker:
    """Contract-valid events with unique ids (``<run>-<part>-<n>``)."""

    TYPES = (
        "campaign.received",
        "message.read",
        "link.clicked",
        "message.inbound",
        "message.outbound",
        "call",
        "contact.updated",
    )
    WEIGHTS = (22, 14, 7, 22, 22, 4, 4)

    def __init__(self, run: str, part: int, seed: int) -> None:
        self.run = run
        self.part = part
        self.n = 0
        self.rng = random.Random(seed)

    def _id(self) -> str:
        self.n += 1
        return f"{self.run}-{self.part}-{self.n}"

    def _mid(self) -> str:
        return f"m{self.rng.getrandbits(40):010x}"

    def attributes(self) -> dict[str, Any]:
        rng = self.rng
        signup = datetime(2024, 1, 1) + timedelta(days=rng.randrange(700))
        return {
            "city": rng.choice(CITIES),
            "plan": rng.choice(PLANS),
            "signup": signup.strftime("%Y-%m-%d"),
            "language": rng.choice(("en", "hi", "pt", "en")),
        }

    def event(self, tenant: str, contact: str, kind: str, at_us: int) -> dict[str, Any]:
        rng = self.rng
        week = at_us // (7 * 86400 * 1_000_000)
        campaign = f"c{week % 1000}"
        data: dict[str, Any]
        extra: dict[str, Any] = {}
        if kind == "campaign.received":
            promo = rng.random() < 0.8
            data = {
                "campaign_id": campaign,
                "message_id": self._mid(),
                "template": {
                    "name": f"promo_{week % 7}" if promo else "reminder",
                    "type": "marketing" if promo else "utility",
                },
            }
        elif kind == "message.read":
            data = {"message_id": self._mid()}
            if rng.random() < 0.7:
                data["campaign_id"] = campaign
        elif kind == "link.clicked":
            data = {"url": f"https://shop.example/p/{rng.randrange(500)}"}
            if rng.random() < 0.6:
                data["campaign_id"] = campaign
        elif kind == "message.inbound":
            data = {"message_id": self._mid()}
            roll = rng.random()
            if roll < 0.15:
                data["reply_to"] = {"message_id": self._mid(), "campaign_id": campaign}
            elif roll < 0.20:
                data["ctwa"] = {"ad_source_url": f"https://fb.me/ad/{roll * 1e4:.0f}"}
            extra["channel"] = rng.choice(CHANNELS)
        elif kind == "message.outbound":
            data = {"message_id": self._mid()}
            if rng.random() < 0.5:
                data["template"] = {"name": "service_reply", "type": "utility"}
            extra["channel"] = rng.choice(CHANNELS)
        elif kind == "call":
            answered = rng.random() < 0.6
            data = {
                "direction": "inbound" if rng.random() < 0.7 else "outbound",
                "answered": answered,
            }
            if answered:
                data["duration_seconds"] = rng.randrange(10, 900)
        else:
            data = {"attributes": {"plan": rng.choice(PLANS)}}
            if rng.random() < 0.5:
                data["source"] = rng.choice(SOURCES)
        return {
            "event_id": self._id(),
            "tenant_id": tenant,
            "contact_id": contact,
            "type": kind,
            "occurred_at": rfc(at_us),
            "data": data,
            **extra,
        }

    def first(self, tenant: str, contact: str, at_us: int) -> dict[str, Any]:
        return {
            "event_id": self._id(),
            "tenant_id": tenant,
            "contact_id": contact,
            "type": "contact.updated",
            "occurred_at": rfc(at_us),
            "data": {
                "attributes": self.attributes(),
                "source": self.rng.choice(SOURCES),
            },
        }

    def random_kind(self) -> str:
        return self.rng.choices(self.TYPES, self.WEIGHTS)[0]


# -- the pre-filled stream --------------------------------------------------------


@dataclass(frozen=True)
class PartSpec:
    bootstrap: str
    prefix: str
    run: str
    part: int
    parts: int
    events: int
    contacts: int
    now_us: int


def part_events(spec: PartSpec) -> Iterator[dict[str, Any]]:
    """This publisher's share of the stream, in ``occurred_at`` order."""
    maker = EventMaker(spec.run, spec.part, seed=1000 + spec.part)
    rng = maker.rng
    mine = list(range(spec.part, spec.contacts, spec.parts))
    extra_total = spec.events - spec.contacts
    extra = extra_total // spec.parts + (spec.part < extra_total % spec.parts)
    span = 90 * 86400 * 1_000_000
    start = spec.now_us - span
    plan: list[tuple[int, int, bool]] = [
        (start + rng.randrange(span - 60_000_000), i, True) for i in mine
    ]
    plan += [
        (start + rng.randrange(span - 60_000_000), rng.choice(mine), False)
        for _ in range(extra)
    ]
    plan.sort()
    for at_us, index, first in plan:
        tenant = tenant_of(index, spec.contacts).id
        contact = contact_id(index)
        if first:
            yield maker.first(tenant, contact, at_us)
        else:
            yield maker.event(tenant, contact, maker.random_kind(), at_us)


#: Publisher processes start fresh: nothing of the benchmark's state is copied.
SPAWN = multiprocessing.get_context("spawn")


def _publish_part(spec: PartSpec) -> int:
    return asyncio.run(_publish_part_async(spec))


async def _publish_part_async(spec: PartSpec) -> int:
    producer = AIOKafkaProducer(
        bootstrap_servers=spec.bootstrap,
        linger_ms=50,
        max_batch_size=512 * 1024,
        compression_type=None,
    )
    await producer.start()
    sent = 0
    try:
        pending: list[asyncio.Future[Any]] = []
        for event in part_events(spec):
            pending.append(
                await producer.send(
                    topic_for(event, spec.prefix),
                    orjson.dumps(event),
                    key=record_key(event),
                )
            )
            sent += 1
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent


def publish_stream(
    bootstrap: str,
    prefix: str,
    run: str,
    events: int,
    contacts: int,
    now_us: int,
    publishers: int,
) -> int:
    """Publish the stream with ``publishers`` processes, one producer each."""
    specs = [
        PartSpec(bootstrap, prefix, run, p, publishers, events, contacts, now_us)
        for p in range(publishers)
    ]
    with ProcessPoolExecutor(publishers, mp_context=SPAWN) as pool:
        return sum(pool.map(_publish_part, specs))


def input_topic_names(prefix: str) -> list[str]:
    return [prefix + t for t in INPUT_TOPICS]


# -- latency and clock-boundary streams --------------------------------------------


def latency_events(
    run: str, count: int, pool: int, now_us: int, seed: int = 7
) -> list[dict[str, Any]]:
    """``count`` events over ``pool`` fresh contacts of the three tenants.

    A contact's first event is its ``contact.updated``; later ones follow the
    mix. ``occurred_at`` is set when the event is sent (see run.py).
    """
    maker = EventMaker(run, 0, seed)
    rng = maker.rng
    seen: set[int] = set()
    out = []
    for _ in range(count):
        index = rng.randrange(pool)
        tenant = tenant_of(index, pool).id
        contact = contact_id(index)
        if index in seen:
            out.append(maker.event(tenant, contact, maker.random_kind(), now_us))
        else:
            seen.add(index)
            out.append(maker.first(tenant, contact, now_us))
    return out


@dataclass(frozen=True, slots=True)
class SteadySpec:
    """A steady stream for the latency figure (see ``publish_steady``)."""

    bootstrap: str
    prefix: str
    run: str
    events: int
    rate: float


@dataclass(slots=True)
class SteadyResult:
    #: event_id -> the Kafka timestamp it was sent with (ms).
    sent: dict[str, int]
    seconds: float
    #: The longest time between two turns of the send loop (s).
    max_stall: float


def publish_steady(spec: SteadySpec) -> SteadyResult:
    """Send ``latency_events`` at ``rate`` from this process; run it in one
    of its own, so that nothing the measuring process does (reading the
    membership topic, watching the group) can pause the stream and send
    what it held back as a burst."""
    return asyncio.run(_publish_steady(spec))


async def _publish_steady(spec: SteadySpec) -> SteadyResult:
    events = latency_events(spec.run, spec.events, max(1, spec.events // 4), 0)
    producer = AIOKafkaProducer(bootstrap_servers=spec.bootstrap, linger_ms=1)
    await producer.start()
    sent: dict[str, int] = {}
    try:
        # Nothing is freed while sending; the collector's full passes over
        # the events above would be pauses of this stream.
        gc.collect()
        gc.freeze()
        gc.disable()
        started = tick = time.monotonic()
        stall = 0.0
        pending: list[asyncio.Future[Any]] = []
        i = 0
        while i < spec.events:
            now_s = time.monotonic()
            stall, tick = max(stall, now_s - tick), now_s
            due = min(spec.events, int(spec.rate * (now_s - started)) + 1)
            while i < due:
                event = events[i]
                now_ms = int(time.time() * 1000)
                event["occurred_at"] = rfc(now_ms * 1000)
                pending.append(
                    await producer.send(
                        topic_for(event, spec.prefix),
                        orjson.dumps(event),
                        key=record_key(event),
                        timestamp_ms=now_ms,
                    )
                )
                sent[event["event_id"]] = now_ms
                i += 1
            if len(pending) > 5000:
                await asyncio.gather(*pending)
                pending.clear()
            await asyncio.sleep(0.005)
        await asyncio.gather(*pending)
        seconds = time.monotonic() - started
    finally:
        gc.enable()
        await producer.stop()
    return SteadyResult(sent, seconds, stall)


CLOCK_TENANT = Tenant("clockco", "Asia/Kolkata", 1.0)


def clock_events(
    run: str, contacts: int, boundary_us: int, boundaries: int
) -> tuple[list[dict[str, Any]], list[int]]:
    """Histories for the clock-boundary figure, and the changers per boundary.

    Boundary ``r`` is local midnight ``boundary_us + r`` days. For each
    ``r``, 10 % of the contacts have their only click at local noon seven days
    before it, so they leave "Clicked this week" exactly then; 40 % clicked
    the day before the first boundary (members at every boundary); the rest
    never clicked. Every contact has a ``contact.updated`` with attributes
    whose answers do not move in the days measured.
    """
    maker = EventMaker(run, 0, seed=11)
    day = 86400 * 1_000_000
    out: list[dict[str, Any]] = []
    changers = [0] * boundaries
    for index in range(contacts):
        contact = contact_id(index)
        tenant = CLOCK_TENANT.id
        first = maker.first(tenant, contact, boundary_us - 20 * day)
        out.append(first)
        group = index % 10
        if group < boundaries:
            at = boundary_us + group * day - 7 * day + day // 2
            changers[group] += 1
        elif group < boundaries + 4:
            at = boundary_us - day // 2
        else:
            continue
        out.append(maker.event(tenant, contact, "link.clicked", at))
    return out, changers
