"""The logic of the operator tools ``profilestream generate``, ``tail`` and ``lag``.

* ``generate`` publishes contract-valid events of all seven types, in a mix
  resembling a messaging platform's traffic, at a steady rate, each validated
  by the worker's own models (``schemas.events``) before it is sent.
* ``tail`` prints ``segments.membership`` one readable line per change.
* ``lag`` reports, per input partition, the consumer group's committed offset,
  the end offset and the difference.

Every aiokafka client here is created inside a coroutine (aiokafka binds its
clients to the running event loop and refuses to be built outside one), with
the connection options the worker uses, TLS and SASL included.
``streams.cli`` parses the flags and owns the terminal (signals, exit codes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from schemas.events import parse_event
from streams.demo import TOPIC_FOR_TYPE, record_key, topic_for

logger = logging.getLogger(__name__)

#: How to reach Kafka: a bootstrap address, or the keyword arguments of an
#: aiokafka client (``Settings.kafka_client_options()``: address, TLS, SASL).
KafkaConnection = str | Mapping[str, Any]


def client_options(kafka: KafkaConnection) -> dict[str, Any]:
    if isinstance(kafka, str):
        return {"bootstrap_servers": kafka}
    return dict(kafka)


# --------------------------------------------------------------------- generate

#: Share of each event type in generated traffic. Business messages dominate,
#: then replies and read receipts; calls and profile updates are rarer.
EVENT_MIX: tuple[tuple[str, float], ...] = (
    ("message.outbound", 0.24),
    ("message.inbound", 0.20),
    ("message.read", 0.18),
    ("campaign.received", 0.12),
    ("link.clicked", 0.10),
    ("contact.updated", 0.09),
    ("call", 0.07),
)
_CHANNELS = (("whatsapp", 0.70), ("instagram", 0.12), ("messenger", 0.10))
_CHANNELS_SMS = 0.08
_CAMPAIGNS = ("cmp-spring-sale", "cmp-black-friday", "cmp-restock", "cmp-loyalty")
_TEMPLATES = (
    ("welcome", "utility"),
    ("order_update", "utility"),
    ("otp", "authentication"),
    ("spring_offer", "marketing"),
    ("back_in_stock", "marketing"),
)
_URLS = (
    "https://shop.example/offer",
    "https://shop.example/cart",
    "https://shop.example/p/4411",
    "https://help.example/returns",
)
_CITIES = ("Pune", "Mumbai", "Lisbon", "Austin", "Jakarta", "Lagos")
_PLANS = ("free", "silver", "gold")
_SOURCES = ("import", "api", "form", "crm")


def rfc3339(instant: datetime) -> str:
    """UTC, milliseconds, ``Z``: ``2026-12-03T09:00:00.000Z``."""
    text = instant.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def parse_instant(text: str) -> datetime:
    """An RFC 3339 instant with an offset (``Z`` accepted)."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset")
    return value


class EventGenerator:
    """Builds events for ``tenants`` x ``contacts`` contacts, deterministic per seed.

    Contact ``i`` of every tenant is ``+1555`` followed by ``i`` on 7 digits; a
    tenth of the contacts are "hot" and get a fifth of the traffic. Event ids
    are ``gen-<run>-<n>``, unique per run, so a second run is new traffic and
    not deduplicated away. ``occurred_at`` is ``now`` minus up to
    ``spread_seconds``.
    """

    def __init__(
        self,
        tenants: Sequence[str],
        contacts: int,
        *,
        seed: int | None = None,
        run: str | None = None,
        spread_seconds: float = 0.0,
    ) -> None:
        if not tenants:
            raise ValueError("at least one tenant is needed")
        if contacts < 1:
            raise ValueError("at least one contact is needed")
        self.tenants = list(tenants)
        self.contacts = contacts
        self.spread_seconds = max(0.0, spread_seconds)
        self.rng = random.Random(seed)
        self.run = run or uuid.uuid4().hex[:8]
        self._types = [t for t, _ in EVENT_MIX]
        self._weights = [w for _, w in EVENT_MIX]
        self._hot = max(1, contacts // 10)

    @staticmethod
    def contact_id(index: int) -> str:
        return f"+1555{index:07d}"

    def _contact(self) -> str:
        if self.rng.random() < 0.2:
            return self.contact_id(self.rng.randrange(self._hot))
        return self.contact_id(self.rng.randrange(self.contacts))

    def _channel(self) -> str:
        roll = self.rng.random()
        for name, share in _CHANNELS:
            if roll < share:
                return name
            roll -= share
        return "sms"

    def _template(self, marketing: bool = False) -> dict[str, str]:
        choices = [t for t in _TEMPLATES if t[1] == "marketing"] if marketing else None
        name, kind = self.rng.choice(choices or _TEMPLATES)
        return {"name": name, "type": kind}

    def _data(self, kind: str, n: int) -> tuple[dict[str, Any], bool]:
        """The ``data`` of an event of ``kind`` and whether it carries a channel."""
        rng = self.rng
        message_id = f"m-{self.run}-{n}"
        if kind == "message.outbound":
            data: dict[str, Any] = {"message_id": message_id}
            if rng.random() < 0.4:
                data["template"] = self._template()
            return data, True
        if kind == "message.inbound":
            data = {"message_id": message_id}
            if rng.random() < 0.3:
                reply: dict[str, str] = {
                    "message_id": f"m-{self.run}-{rng.randrange(n + 1)}"
                }
                if rng.random() < 0.5:
                    reply["campaign_id"] = rng.choice(_CAMPAIGNS)
                data["reply_to"] = reply
            if rng.random() < 0.08:
                data["ctwa"] = {
                    "ad_source_url": f"https://fb.me/ad/{rng.randrange(100)}"
                }
            return data, True
        if kind == "message.read":
            data = {"message_id": f"m-{self.run}-{rng.randrange(n + 1)}"}
            if rng.random() < 0.5:
                data["campaign_id"] = rng.choice(_CAMPAIGNS)
            return data, rng.random() < 0.5
        if kind == "campaign.received":
            data = {"campaign_id": rng.choice(_CAMPAIGNS), "message_id": message_id}
            if rng.random() < 0.9:
                data["template"] = self._template(marketing=True)
            return data, True
        if kind == "link.clicked":
            data = {"url": rng.choice(_URLS)}
            if rng.random() < 0.6:
                data["campaign_id"] = rng.choice(_CAMPAIGNS)
                data["message_id"] = f"m-{self.run}-{rng.randrange(n + 1)}"
            return data, False
        if kind == "call":
            answered = rng.random() < 0.65
            data = {
                "direction": rng.choice(("inbound", "outbound")),
                "answered": answered,
            }
            if answered:
                data["duration_seconds"] = rng.randrange(5, 900)
            return data, True
        if kind == "contact.updated":
            attributes: dict[str, Any] = {}
            if rng.random() < 0.7:
                attributes["city"] = rng.choice(_CITIES)
            if rng.random() < 0.5:
                attributes["plan"] = rng.choice(_PLANS)
            if rng.random() < 0.3:
                attributes["opted_in"] = rng.random() < 0.8
            if rng.random() < 0.1:
                attributes["coupon"] = None  # removes the attribute
            data = {"attributes": attributes}
            if rng.random() < 0.6:
                data["source"] = rng.choice(_SOURCES)
            return data, False
        raise ValueError(f"unknown event type {kind!r}")

    def event(self, n: int, now: datetime) -> dict[str, Any]:
        """Event number ``n`` of this run, occurring at or shortly before ``now``."""
        kind = self.rng.choices(self._types, self._weights)[0]
        data, with_channel = self._data(kind, n)
        occurred = now - timedelta(seconds=self.rng.uniform(0, self.spread_seconds))
        event: dict[str, Any] = {
            "event_id": f"gen-{self.run}-{n}",
            "tenant_id": self.rng.choice(self.tenants),
            "contact_id": self._contact(),
            "type": kind,
            "occurred_at": rfc3339(occurred),
            "data": data,
        }
        if with_channel:
            event["channel"] = self._channel()
        return event


class Progress:
    """A one-line progress display on a text stream, redrawn with ``\\r``.

    Redraws at most every ``interval`` seconds (one second when the stream is
    not a terminal, so a captured log stays short); ``finish`` ends the line.
    """

    def __init__(
        self,
        stream: TextIO,
        total: int | None,
        *,
        interval: float | None = None,
        width: int = 30,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.total = total
        self.width = width
        self.clock = clock
        self.started = clock()
        if interval is None:
            interval = 0.1 if _isatty(stream) else 1.0
        self.interval = interval
        self._last_draw = float("-inf")
        self._last_len = 0

    def render(self, done: int, elapsed: float) -> str:
        rate = done / elapsed if elapsed > 0 else 0.0
        if self.total:
            share = min(1.0, done / self.total)
            filled = int(share * self.width)
            bar = "#" * filled + "-" * (self.width - filled)
            left = self.total - done
            eta = f"eta {left / rate:.0f}s" if rate > 0 and left > 0 else ""
            return (
                f"[{bar}] {done}/{self.total} {share * 100:5.1f}%"
                f"  {rate:,.0f} ev/s  {eta}"
            ).rstrip()
        return f"{done} events  {rate:,.0f} ev/s  {elapsed:.0f}s  (Ctrl-C to stop)"

    def update(self, done: int, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last_draw < self.interval:
            return
        self._last_draw = now
        line = self.render(done, now - self.started)
        pad = " " * max(0, self._last_len - len(line))
        self._last_len = len(line)
        self.stream.write(f"\r{line}{pad}")
        self.stream.flush()

    def finish(self, done: int) -> None:
        self.update(done, force=True)
        self.stream.write("\n")
        self.stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@dataclass
class GenerateResult:
    published: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    by_type: Counter[str] = field(default_factory=Counter)
    run: str = ""

    def summary(self) -> str:
        rate = self.published / self.seconds if self.seconds > 0 else 0.0
        mix = ", ".join(f"{k} {v}" for k, v in sorted(self.by_type.items()))
        how = "stopped by Ctrl-C after" if self.interrupted else "published"
        return (
            f"{how} {self.published} events in {self.seconds:.1f}s "
            f"({rate:,.0f} ev/s), run {self.run}: {mix}"
        )


async def generate(
    generator: EventGenerator,
    kafka: KafkaConnection,
    *,
    prefix: str = "",
    rate: float | None = None,
    count: int | None = None,
    at: datetime | None = None,
    stop: asyncio.Event | None = None,
    progress: Progress | None = None,
    window: int = 2000,
) -> GenerateResult:
    """Publish ``count`` events (or until ``stop`` is set) at ``rate`` per second.

    Each event goes to the topic that usually carries its type, keyed
    ``tenant:contact``, through an idempotent ``acks=all`` producer. At most
    ``window`` sends wait for their acknowledgement at once. ``published``
    counts acknowledged events only; with ``at`` every event occurs at (or up
    to the generator's spread before) that instant instead of the system clock.
    """
    stop = stop or asyncio.Event()
    result = GenerateResult(run=generator.run)
    existing = await existing_partitions(kafka)
    missing = sorted(
        prefix + t for t in set(TOPIC_FOR_TYPE.values()) if prefix + t not in existing
    )
    if missing:
        logger.warning(
            "Topics missing: %s; the broker creates them with its own defaults if "
            "it auto-creates topics, else sending fails (start a worker first, "
            "it creates them)",
            ", ".join(missing),
        )
    producer = AIOKafkaProducer(
        **client_options(kafka), acks="all", enable_idempotence=True, linger_ms=5
    )
    await producer.start()
    started = time.monotonic()
    pending: list[tuple[asyncio.Future[Any], str]] = []

    async def settle() -> None:
        futures = [f for f, _ in pending]
        await asyncio.gather(*futures)
        for _, kind in pending:
            result.published += 1
            result.by_type[kind] += 1
        pending.clear()

    try:
        n = 0
        while count is None or n < count:
            if stop.is_set():
                result.interrupted = True
                break
            if rate:
                ahead = started + n / rate - time.monotonic()
                if ahead > 0.005:
                    await _sleep_or_stop(stop, ahead)
                    continue
            event = generator.event(n, at or datetime.now(UTC))
            value = orjson.dumps(event)
            parse_event(value)  # a generated event is valid, or this is a bug
            future = await producer.send(
                topic_for(event, prefix), value, key=record_key(event)
            )
            pending.append((future, event["type"]))
            n += 1
            if len(pending) >= window:
                await settle()
            elif n % 200 == 0:
                await asyncio.sleep(0)  # let Ctrl-C and the sender in
            if progress is not None:
                progress.update(result.published + len(pending))
        await settle()
        await producer.flush()
    finally:
        result.seconds = time.monotonic() - started
        if progress is not None:
            progress.finish(result.published)
        await producer.stop()
    return result


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


# --------------------------------------------------------------------- tail


def format_change(change: dict[str, Any]) -> str:
    """One membership change as one line::

    2026-12-03T09:00:00Z  acme  seg_x v3  +14155550100  entered  (event evt-123)
    """
    reason = str(change.get("reason", "?"))
    caused_by = change.get("caused_by")
    why = f"{reason} {caused_by}" if caused_by else reason
    return (
        f"{change.get('at', '?')}  {change.get('tenant_id', '?')}  "
        f"{change.get('segment_id', '?')} v{change.get('segment_version', '?')}  "
        f"{change.get('contact_id', '?')}  {change.get('change', '?')}  ({why})"
    )


async def existing_partitions(kafka: KafkaConnection) -> dict[str, list[int]]:
    """Every topic of the cluster and its partitions.

    Asks for all topics rather than by name: a metadata request naming a topic
    that does not exist makes a broker with ``auto.create.topics.enable`` create
    it with its defaults.
    """
    admin = AIOKafkaAdminClient(**client_options(kafka))
    await admin.start()
    try:
        described = await admin.describe_topics()
    finally:
        await admin.close()
    return {
        t["topic"]: sorted(p["partition"] for p in t["partitions"])
        for t in described
        if t["error_code"] == 0 and t["partitions"]
    }


async def topic_partitions(
    kafka: KafkaConnection, topic: str, wait_seconds: float
) -> list[TopicPartition]:
    """The partitions of ``topic``, waiting up to ``wait_seconds`` for it to exist."""
    deadline = time.monotonic() + wait_seconds
    waiting = False
    while True:
        found = (await existing_partitions(kafka)).get(topic)
        if found:
            return [TopicPartition(topic, p) for p in found]
        if not waiting:
            waiting = True
            logger.warning(
                "Topic %s does not exist yet; waiting up to %.0f s", topic, wait_seconds
            )
        if time.monotonic() >= deadline:
            raise LookupError(
                f"topic {topic} does not exist (is the prefix right? "
                "a worker creates it when it starts)"
            )
        await asyncio.sleep(0.5)


async def tail(
    kafka: KafkaConnection,
    topic: str,
    out: TextIO,
    *,
    from_beginning: bool = False,
    tenant: str | None = None,
    max_records: int | None = None,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[str], None] | None = None,
    wait_seconds: float = 30.0,
) -> int:
    """Print membership changes from ``topic`` until ``stop`` or ``max_records``.

    Reads every partition without a consumer group (nothing is committed), from
    the end or, with ``from_beginning``, from the earliest offset. Records of
    one poll are printed in timestamp order. Returns the number of lines
    printed; records that are not membership JSON are reported on stderr and
    skipped.
    """
    stop = stop or asyncio.Event()
    partitions = await topic_partitions(kafka, topic, wait_seconds)
    consumer = AIOKafkaConsumer(
        **client_options(kafka),
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    await consumer.start()
    printed = 0
    try:
        consumer.assign(partitions)
        if from_beginning:
            await consumer.seek_to_beginning(*partitions)
        else:
            await consumer.seek_to_end(*partitions)
        for tp in partitions:  # resolve the start now, so "ready" means ready
            await consumer.position(tp)
        if on_ready is not None:
            where = "the beginning" if from_beginning else "the end"
            on_ready(f"tailing {topic} ({len(partitions)} partitions) from {where}")
        while not stop.is_set():
            if max_records is not None and printed >= max_records:
                break
            poll = asyncio.ensure_future(consumer.getmany(timeout_ms=500))
            stopped = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait(
                {poll, stopped}, return_when=asyncio.FIRST_COMPLETED
            )
            stopped.cancel()
            if poll not in done:
                poll.cancel()
                break
            records = [r for batch in poll.result().values() for r in batch]
            records.sort(key=lambda r: (r.timestamp, r.partition, r.offset))
            for record in records:
                try:
                    change = orjson.loads(record.value)
                    if not isinstance(change, dict):
                        raise ValueError("not a JSON object")
                except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
                    sys.stderr.write(
                        f"skipping unreadable record {record.topic}"
                        f"[{record.partition}]@{record.offset}: {exc}\n"
                    )
                    continue
                if tenant is not None and change.get("tenant_id") != tenant:
                    continue
                out.write(format_change(change) + "\n")
                out.flush()
                printed += 1
                if max_records is not None and printed >= max_records:
                    break
    finally:
        await consumer.stop()
    return printed


# --------------------------------------------------------------------- lag


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None  # None: the group never committed here
    start: int  # log start offset
    end: int

    @property
    def lag(self) -> int:
        """Records the group has still to consume (from the log start if it never
        committed, which is where a worker reading from the earliest starts)."""
        position = self.start if self.committed is None else self.committed
        return max(0, self.end - max(position, self.start))


@dataclass
class LagReport:
    group: str
    partitions: list[PartitionLag]
    missing_topics: list[str]

    @property
    def total(self) -> int:
        return sum(p.lag for p in self.partitions)

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "total_lag": self.total,
            "missing_topics": self.missing_topics,
            "partitions": [
                {
                    "topic": p.topic,
                    "partition": p.partition,
                    "committed": p.committed,
                    "start": p.start,
                    "end": p.end,
                    "lag": p.lag,
                }
                for p in self.partitions
            ],
        }

    def table(self) -> str:
        names = [p.topic for p in self.partitions] + self.missing_topics
        width = max(len(name) for name in ["topic", *names])
        lines = [
            f"{'topic':<{width}}  {'partition':>9}  {'committed':>10}  "
            f"{'end':>10}  {'lag':>8}"
        ]
        for p in self.partitions:
            committed = "-" if p.committed is None else str(p.committed)
            lines.append(
                f"{p.topic:<{width}}  {p.partition:>9}  {committed:>10}  "
                f"{p.end:>10}  {p.lag:>8}"
            )
        for topic in self.missing_topics:
            lines.append(f"{topic:<{width}}  (topic does not exist)")
        lines.append(
            f"total lag {self.total} for group {self.group} "
            f"over {len(self.partitions)} partitions"
        )
        return "\n".join(lines) + "\n"


async def consumer_lag(
    kafka: KafkaConnection, group: str, topics: Sequence[str]
) -> LagReport:
    """Committed offsets of ``group`` against the end offsets of ``topics``."""
    existing = await existing_partitions(kafka)
    partitions = [
        TopicPartition(topic, p) for topic in topics for p in existing.get(topic, [])
    ]
    missing = [topic for topic in topics if topic not in existing]
    consumer = AIOKafkaConsumer(**client_options(kafka), enable_auto_commit=False)
    admin = AIOKafkaAdminClient(**client_options(kafka))
    await consumer.start()
    await admin.start()
    try:
        starts = await consumer.beginning_offsets(partitions) if partitions else {}
        ends = await consumer.end_offsets(partitions) if partitions else {}
        committed = await admin.list_consumer_group_offsets(group)
        rows = []
        for tp in partitions:
            meta = committed.get(tp)
            offset = None if meta is None or meta.offset < 0 else int(meta.offset)
            rows.append(
                PartitionLag(tp.topic, tp.partition, offset, starts[tp], ends[tp])
            )
        return LagReport(group, rows, missing)
    finally:
        await consumer.stop()
        await admin.close()
