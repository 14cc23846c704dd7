"""What the engine tests against a real Redis share: a membership sink that
keeps what it is given, the ``redis`` fixture, a client of the test Redis (a
plugin of ``tests/conftest.py``), and the parts of an in-process ingest loop
over the test Kafka and Redis."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from segments.registry import Registry, RegistryCache
from signals.keys import Keys
from signals.redis_client import connect
from signals.store import Store
from signals.windows import US
from streams.engine import Clock, Engine
from streams.ingest import Ingest
from streams.kafka import Publisher, ensure_topics
from streams.settings import Settings


class Sink:
    """Stands in for the Kafka publisher: keeps the membership records."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    async def publish_membership(self, records: Sequence[dict[str, Any]]) -> None:
        self.records += records


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = connect(redis_url)
    yield client
    await client.aclose()


@contextlib.asynccontextmanager
async def ingest_parts(
    kafka_bootstrap: str, redis_url: str, name: str, **settings: Any
) -> AsyncIterator[tuple[Settings, Store, Publisher]]:
    """Settings of a fresh namespace (topics with 2 partitions, Redis prefix
    and consumer group named ``name`` + a random suffix), its store and a
    started publisher; the namespace's Redis keys are removed afterwards."""
    run = f"{name}{uuid.uuid4().hex[:8]}"
    config = Settings(
        kafka_bootstrap=kafka_bootstrap,
        redis_url=SecretStr(redis_url),
        topic_prefix=f"{run}.",
        redis_prefix=run,
        consumer_group=run,
        **settings,
    )
    await ensure_topics(config, partitions=2)
    redis = connect(redis_url)
    store = Store(redis, Keys(config.redis_prefix))
    await store.load_scripts()
    publisher = Publisher(config)
    await publisher.start()
    try:
        yield config, store, publisher
    finally:
        await publisher.stop()
        async for key in redis.scan_iter(f"{config.redis_prefix}:*"):
            await redis.unlink(key)
        await redis.aclose()


def fresh_ingest(settings: Settings, store: Store, publisher: Publisher) -> Ingest:
    """A fresh worker's ingest side (nothing checked since its assignment)."""
    registry = Registry(store.redis, store.keys, default_limit=10)
    engine = Engine(
        store,
        RegistryCache(registry),
        publisher,
        Clock(manual=False),
        dedup_horizon_us=24 * 3600 * US,
    )
    return Ingest(settings, engine, publisher)
