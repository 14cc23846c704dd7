"""Offset commits: batches applied within the commit interval share a commit,
nothing applied is left uncommitted, a rebalance or a stop commits at once,
and a batch is committed only once its membership records are published.

Real Kafka and Redis; the ingest loop runs in-process so that its commits can
be counted.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from segments.rules import parse_spec
from signals.store import Store
from streams.demo import record_key, topic_for
from streams.kafka import Publisher
from streams.settings import Settings
from tests.engine_fixtures import fresh_ingest, ingest_parts
from tests.events import Events

pytestmark = pytest.mark.services


class Counted:
    """The ingest loop of one worker, its batches and its commits counted."""

    def __init__(self, settings: Settings, store: Store, publisher: Publisher) -> None:
        self.ingest = fresh_ingest(settings, store, publisher)
        self.batches = 0
        self.records = 0
        self.commits: list[dict[TopicPartition, int]] = []
        self.commit_times: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.ingest.start()
        consumer = self.ingest.consumer
        commit, process = consumer.commit, self.ingest.process

        async def counted_commit(offsets: dict[TopicPartition, int]) -> None:
            self.commits.append(dict(offsets))
            self.commit_times.append(time.monotonic())
            await commit(offsets)

        async def counted_process(batch: Any) -> Any:
            self.batches += 1
            stats = await process(batch)
            self.records += stats.records
            return stats

        consumer.commit = counted_commit
        self.ingest.process = counted_process  # type: ignore[method-assign]
        self._task = asyncio.create_task(self.ingest.run())

    async def stop(self) -> None:
        await self.ingest.stop()
        if self._task is not None:
            await asyncio.wait_for(self._task, 30)


@pytest.fixture
async def parts(
    kafka_bootstrap: str, redis_url: str
) -> AsyncIterator[tuple[Settings, Store, Publisher]]:
    async with ingest_parts(
        kafka_bootstrap, redis_url, "cmt", commit_interval_seconds=2.0
    ) as parts:
        yield parts


async def publish(settings: Settings, events: list[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        for event in events:
            await producer.send_and_wait(
                topic_for(event, settings.topic_prefix),
                orjson.dumps(event),
                key=record_key(event),
            )
    finally:
        await producer.stop()


async def committed(settings: Settings) -> dict[TopicPartition, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(settings.consumer_group)
        return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
    finally:
        await admin.close()


def bursts(count: int) -> list[list[dict[str, Any]]]:
    events = Events("acme")
    at = datetime.now(UTC)
    return [
        [events.updated(f"c{burst}-{i}", at, {"tier": "gold"}) for i in range(5)]
        for burst in range(count)
    ]


async def wait_for_records(loop: Counted, records: int) -> None:
    """Until the loop has applied ``records`` records (in one batch or more)."""
    deadline = time.monotonic() + 30
    while loop.records < records:
        assert time.monotonic() < deadline, f"only {loop.records} records"
        await asyncio.sleep(0.02)


async def test_batches_within_the_interval_share_a_commit_and_all_get_committed(
    parts: tuple[Settings, Store, Publisher],
) -> None:
    settings = parts[0]
    loop = Counted(*parts)
    await loop.start()
    try:
        for n, burst in enumerate(bursts(4), start=1):
            await publish(settings, burst)
            await wait_for_records(loop, 5 * n)
        # Without further batches, the rest is committed after the interval.
        deadline = time.monotonic() + 15
        while sum((await committed(settings)).values()) < 20:
            assert time.monotonic() < deadline, loop.commits
            await asyncio.sleep(0.1)
        assert sum((await committed(settings)).values()) == 20
    finally:
        await loop.stop()
    # At most one commit per interval, so batches shared them.
    gaps = [b - a for a, b in itertools.pairwise(loop.commit_times)]
    assert gaps, "the batches after the first were never committed"
    assert min(gaps) >= settings.commit_interval_seconds - 0.05, gaps
    assert len(loop.commits) < loop.batches


async def test_committed_commits_what_is_applied_at_once(
    parts: tuple[Settings, Store, Publisher],
) -> None:
    settings = parts[0].model_copy(update={"commit_interval_seconds": 60.0})
    loop = Counted(settings, *parts[1:])
    await loop.start()
    try:
        first, second = bursts(2)
        await publish(settings, first)
        await wait_for_records(loop, 5)
        await publish(settings, second)
        await wait_for_records(loop, 10)
        # The second batch waits for a minute's interval...
        await asyncio.sleep(0.5)
        assert sum((await committed(settings)).values()) < 10
        # ...unless a rebalance or a stop asks for everything applied.
        started = time.monotonic()
        async with loop.ingest.batch_lock:
            await loop.ingest.committed()
        assert time.monotonic() - started < 10
        assert sum((await committed(settings)).values()) == 10
    finally:
        await loop.stop()


async def test_stop_commits_what_is_applied(
    parts: tuple[Settings, Store, Publisher],
) -> None:
    settings = parts[0].model_copy(update={"commit_interval_seconds": 60.0})
    loop = Counted(settings, *parts[1:])
    await loop.start()
    stopped = False
    try:
        for n, burst in enumerate(bursts(3), start=1):
            await publish(settings, burst)
            await wait_for_records(loop, 5 * n)
        await loop.stop()
        stopped = True
        assert sum((await committed(settings)).values()) == 15
    finally:
        if not stopped:
            await loop.stop()


class GatedPublisher:
    """Publishes membership records through the real publisher once open."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        self.gate = asyncio.Event()

    async def publish_membership(self, records: Sequence[dict[str, Any]]) -> None:
        await self.gate.wait()
        await self.publisher.publish_membership(records)


async def test_a_batch_is_committed_once_its_records_are_published(
    parts: tuple[Settings, Store, Publisher],
) -> None:
    settings = parts[0].model_copy(update={"commit_interval_seconds": 0.1})
    loop = Counted(settings, *parts[1:])
    registry = loop.ingest.engine.cache.registry
    await registry.put_tenant("acme", timezone="UTC")
    gold = {"field": "attribute.tier", "op": "is", "value": "gold"}
    await registry.create(
        "acme",
        parse_spec(
            {"name": "gold", "kind": "active", "rule": {"any": [{"all": [gold]}]}}
        ),
    )
    gated = GatedPublisher(parts[2])
    loop.ingest.engine.sink = gated
    await loop.start()
    try:
        await publish(settings, bursts(1)[0])
        # A batch applied (written to Redis) whose records wait at the gate.
        # The five events may come in more than one batch, and a batch's
        # successor waits for its delivery, so only the first is sure to be
        # applied while the gate is shut.
        await wait_for_records(loop, 1)
        await asyncio.sleep(1.0)  # ten commit intervals
        assert sum((await committed(settings)).values()) == 0
        gated.gate.set()
        deadline = time.monotonic() + 15
        while sum((await committed(settings)).values()) < 5:
            assert time.monotonic() < deadline, loop.commits
            await asyncio.sleep(0.1)
    finally:
        gated.gate.set()
        await loop.stop()
