"""What the engine tests against a real Redis share: a membership sink that
keeps what it is given, and the ``redis`` fixture, a client of the test Redis
(a plugin of ``tests/conftest.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from redis.asyncio import Redis

from signals.redis_client import connect


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
