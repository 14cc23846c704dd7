"""Authenticated connections: Kafka SASL/PLAIN and a Redis ACL user.

The local broker of ``scripts/services.py`` has a SASL_PLAINTEXT listener with
test-only credentials (exported as ``KAFKA_SASL_BOOTSTRAP``); where the
services come from elsewhere and have no such listener, the Kafka half is
skipped with that reason.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.events import Events
from tests.harness import WorkerProcess, unique

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from services import KAFKA_SASL_PASSWORD, KAFKA_SASL_USER


@pytest.fixture
async def acl_user(redis_url: str) -> AsyncIterator[tuple[str, str]]:
    name, password = unique("ps-user-"), uuid.uuid4().hex
    admin = Redis.from_url(redis_url)
    await admin.execute_command(
        "ACL", "SETUSER", name, "on", f">{password}", "~*", "&*", "+@all"
    )
    try:
        yield name, password
    finally:
        await admin.execute_command("ACL", "DELUSER", name)
        await admin.aclose()


async def test_a_worker_with_sasl_and_a_redis_acl_user(
    kafka_bootstrap: str, redis_url: str, acl_user: tuple[str, str]
) -> None:
    sasl_bootstrap = os.environ.get("KAFKA_SASL_BOOTSTRAP")
    if not sasl_bootstrap:
        pytest.skip("no SASL listener: KAFKA_SASL_BOOTSTRAP is not set")
    user, password = acl_user
    host = redis_url.split("://", 1)[1]
    worker = WorkerProcess(
        kafka_bootstrap,
        redis_url,
        extra_env={
            "KAFKA_BOOTSTRAP": sasl_bootstrap,
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_MECHANISM": "PLAIN",
            "KAFKA_SASL_USERNAME": KAFKA_SASL_USER,
            "KAFKA_SASL_PASSWORD": KAFKA_SASL_PASSWORD,
            "REDIS_URL": f"redis://{user}:{password}@{host}",
        },
    )
    await worker.start()
    try:
        tenant = unique("tn")
        now = await worker.now()
        await worker.publish([Events(tenant).click("c1", now - timedelta(minutes=1))])
        await worker.settle()
        signals = (await worker.contact(tenant, "c1"))["signals"]
        assert signals["links_clicked_7d"] == 1
        clients = await worker.redis.execute_command("CLIENT", "LIST")
        assert f"user={user}".encode() in clients
    finally:
        await worker.stop()
    log = worker.log_path.read_text()
    assert password not in log
    assert KAFKA_SASL_PASSWORD not in log
