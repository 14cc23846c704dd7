"""Kafka at the edges: topic names, the producer, topic creation.

Everything this project sends goes through ``Publisher``: membership changes
and dead letters. It is an idempotent producer with ``acks=all``, and each
``publish_*`` call returns only when Kafka has acknowledged every record, so
the caller can then commit the input offsets or clear an outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.partitioner import murmur2

from signals.errors import ProfileStreamError
from streams.settings import Settings

logger = logging.getLogger(__name__)

INPUT_TOPICS = (
    "engagement.messages",
    "engagement.reads",
    "engagement.clicks",
    "engagement.calls",
    "engagement.campaigns",
    "contacts.updates",
)
DEADLETTER_TOPIC = "engagement.deadletter"
MEMBERSHIP_TOPIC = "segments.membership"


@dataclass(slots=True)
class DeadLetter:
    """A record of the dead-letter topic: the original bytes, where they came
    from and why they were not applied."""

    key: bytes | None
    value: bytes
    topic: str
    partition: int
    offset: int
    reason: str
    kind: str

    @classmethod
    def of(cls, tp: TopicPartition, rec: Any, reason: str, kind: str) -> DeadLetter:
        """The dead letter of consumer record ``rec`` of partition ``tp``."""
        return cls(
            rec.key, rec.value or b"", tp.topic, tp.partition, rec.offset, reason, kind
        )

    @property
    def mark(self) -> tuple[str, int]:
        """The mark it counts against: invalid records and processing
        failures of one input partition keep separate marks."""
        group = "processing" if self.kind == "processing" else "invalid"
        return f"{self.topic}|{group}", self.partition

    @classmethod
    def read(cls, rec: Any) -> DeadLetter:
        """A record of the dead-letter topic, back from its headers."""
        h = {k: v.decode() for k, v in rec.headers}
        return cls(
            rec.key,
            rec.value,
            h.get("source_topic", ""),
            int(h.get("source_partition", "-1")),
            int(h.get("source_offset", "-1")),
            h.get("reason", ""),
            h.get("error_kind", ""),
        )

    def record(self) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
        headers = [
            ("source_topic", self.topic.encode()),
            ("source_partition", str(self.partition).encode()),
            ("source_offset", str(self.offset).encode()),
            ("reason", self.reason.encode()),
            ("error_kind", self.kind.encode()),
        ]
        return self.key, self.value, headers


class KafkaUnavailableError(ProfileStreamError):
    retriable = True


def input_topics(settings: Settings) -> list[str]:
    return [settings.topic(t) for t in INPUT_TOPICS]


async def ensure_topics(settings: Settings, partitions: int = 4) -> None:
    """Create the project's topics that do not exist yet (idempotent)."""
    names = [*input_topics(settings), settings.topic(DEADLETTER_TOPIC)]
    names.append(settings.topic(MEMBERSHIP_TOPIC))
    admin = AIOKafkaAdminClient(**settings.kafka_client_options())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(n, partitions, 1) for n in missing])
            logger.info("Created topics %s", ", ".join(missing))
    finally:
        await admin.close()


class KeyHashes:
    """Kafka's default partitioning (murmur2 of the key, as the Java client
    and aiokafka compute it), with each key's hash remembered.

    aiokafka hashes every record's key in pure Python, a few microseconds
    each; membership records come again and again for the same contacts, so
    the worker keeps the hashes of the keys it saw last (up to ``limit``, then
    starts over). The partition is ``hash % partitions`` as in the default
    partitioner, so a key lands where any Kafka client would put it.
    """

    __slots__ = ("_hashes", "limit")

    def __init__(self, limit: int = 200_000) -> None:
        self.limit = limit
        self._hashes: dict[bytes, int] = {}

    def partition(self, key: bytes, partitions: int) -> int:
        hashed = self._hashes.get(key)
        if hashed is None:
            if len(self._hashes) >= self.limit:
                self._hashes.clear()
            hashed = self._hashes[key] = int(murmur2(key)) & 0x7FFFFFFF
        return hashed % partitions


class Publisher:
    """The worker's one producer."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.membership_topic = settings.topic(MEMBERSHIP_TOPIC)
        self.deadletter_topic = settings.topic(DEADLETTER_TOPIC)
        self._producer: AIOKafkaProducer | None = None
        self._keys = KeyHashes()

    async def start(self) -> None:
        # aiokafka binds its clients to the running loop: create them here.
        self._producer = AIOKafkaProducer(
            **self.settings.kafka_client_options(),
            acks="all",
            enable_idempotence=True,
            # Records of a batch are sent in a loop without yielding, so
            # they are batched anyway; lingering would only add latency.
            linger_ms=0,
            max_batch_size=256 * 1024,
        )
        await self._producer.start()
        # Learn where the membership topic's partitions live now, not when
        # the first change waits for it: that lookup held the first batch
        # about 100 ms, and the events queued behind it for longer.
        try:
            await self._producer.partitions_for(self.membership_topic)
        except KafkaError as exc:
            logger.warning(
                "No metadata for %s yet (%s); the first publish will ask again",
                self.membership_topic,
                exc,
            )

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("Publisher.start() was not awaited")
        return self._producer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    async def _send_all(
        self, topic: str, items: Sequence[tuple[bytes | None, bytes, list[Any]]]
    ) -> list[Any]:
        """Send every item and wait for Kafka; returns their record metadata.

        Keyed records go to the partition the default partitioner would pick
        (``KeyHashes``); the others are left to the producer."""
        producer = self.producer
        keys = self._keys
        try:
            count = len(await producer.partitions_for(topic))
            futures = [
                await producer.send(
                    topic,
                    value,
                    key=key,
                    partition=None if key is None else keys.partition(key, count),
                    headers=headers,
                )
                for key, value, headers in items
            ]
            return list(await asyncio.gather(*futures))
        except KafkaError as exc:
            raise KafkaUnavailableError(f"publishing to {topic} failed: {exc}") from exc

    async def publish_membership(self, records: Sequence[dict[str, Any]]) -> None:
        await self._send_all(
            self.membership_topic,
            [
                (f"{r['tenant_id']}:{r['contact_id']}".encode(), orjson.dumps(r), [])
                for r in records
            ],
        )

    async def publish_deadletters(
        self, letters: Sequence[DeadLetter]
    ) -> dict[int, int]:
        """Publish dead letters; returns, per dead-letter partition written,
        the offset after the last of them."""
        after: dict[int, int] = {}
        records = [d.record() for d in letters]
        for meta in await self._send_all(self.deadletter_topic, records):
            after[meta.partition] = max(after.get(meta.partition, 0), meta.offset + 1)
        return after

    async def deadletter_ends(self) -> dict[int, int]:
        """Per partition of the dead-letter topic, the offset of its end."""
        async with self._deadletter_reader() as (consumer, tps):
            ends = await consumer.end_offsets(tps) if tps else {}
        return {tp.partition: end for tp, end in ends.items()}

    async def published_deadletters(
        self, positions: dict[int, int]
    ) -> list[DeadLetter]:
        """Dead letters in the topic from ``positions`` (per partition; 0 where
        absent) to its end."""
        found: list[DeadLetter] = []
        async with self._deadletter_reader() as (consumer, tps):
            if not tps:
                return found
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            left = {}
            for tp in tps:
                start = min(positions.get(tp.partition, 0), ends[tp])
                consumer.seek(tp, start)
                if start < ends[tp]:
                    left[tp] = ends[tp]
            while left:
                batch = await consumer.getmany(*left, timeout_ms=1000)
                for tp, records in batch.items():
                    end = left.get(tp)
                    if end is None:
                        continue
                    found += (DeadLetter.read(r) for r in records if r.offset < end)
                    if records and records[-1].offset + 1 >= end:
                        del left[tp]
        return found

    @contextlib.asynccontextmanager
    async def _deadletter_reader(
        self,
    ) -> AsyncIterator[tuple[AIOKafkaConsumer, list[TopicPartition]]]:
        consumer = AIOKafkaConsumer(
            **self.settings.kafka_client_options(),
            group_id=None,
            enable_auto_commit=False,
        )
        topic = self.deadletter_topic
        try:
            numbers = await self.producer.partitions_for(topic)
            await consumer.start()
            yield consumer, [TopicPartition(topic, p) for p in sorted(numbers)]
        except KafkaError as exc:
            raise KafkaUnavailableError(f"reading {topic} failed: {exc}") from exc
        finally:
            await consumer.stop()
