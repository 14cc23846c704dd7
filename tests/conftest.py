"""Shared fixtures: real services, one worker process per session, tenants."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from tests.events import Events
from tests.harness import WorkerProcess, unique

pytest_plugins = ("tests.service_fixtures", "tests.engine_fixtures")

#: Where the session's manual clock starts. Tests only move it forward.
SESSION_START = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def token_tenants() -> dict[str, list[str]]:
    """Tenant-bound tokens of the session worker: token -> tenants."""
    a, b = unique("isoa"), unique("isob")
    return {"token-a": [a], "token-b": [b], "token-ab": [a, b]}


@pytest.fixture(scope="session")
async def worker(
    kafka_bootstrap: str, redis_url: str, token_tenants: dict[str, list[str]]
) -> AsyncIterator[WorkerProcess]:
    process = WorkerProcess(kafka_bootstrap, redis_url, tokens=token_tenants)
    await process.start()
    await process.set_clock(SESSION_START)
    try:
        yield process
    finally:
        await process.stop()


@pytest.fixture
def tenant() -> str:
    return unique("tn")


@pytest.fixture
def events(tenant: str) -> Events:
    return Events(tenant)
