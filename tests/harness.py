"""A real worker process under test, and the tools to drive and observe it.

``WorkerProcess`` starts ``profilestream worker`` as a subprocess against the
session's Kafka and Redis, with its own topic prefix, consumer group and Redis
namespace, the manual clock and a free HTTP port. Tests talk to it only
through its public surfaces: Kafka topics in, Kafka topics and HTTP out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import Redis

from streams.demo import record_key, topic_for
from streams.kafka import DEADLETTER_TOPIC, INPUT_TOPICS, MEMBERSHIP_TOPIC

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "test-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rfc(instant: datetime) -> str:
    text = instant.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return text


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@dataclass
class TopicReader:
    """Reads a topic from the start in the background, keeping every record."""

    bootstrap: str
    topic: str
    records: list[Any] = field(default_factory=list)
    #: Per partition, the offset after the last record read.
    read_up_to: dict[TopicPartition, int] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            metadata_max_age_ms=1000,
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=200)
            for tp, records in batch.items():
                self.records.extend(records)
                if records:
                    self.read_up_to[tp] = records[-1].offset + 1

    async def catch_up(self, wait_seconds: float = 30) -> None:
        """Wait until every record now on the topic has been read."""
        ends = await end_offsets(self.bootstrap, [self.topic])

        async def read() -> bool:
            return all(self.read_up_to.get(tp, 0) >= end for tp, end in ends.items())

        await wait_until(
            read,
            wait_seconds,
            lambda: f"{self.topic}: read {self.read_up_to} of {ends}",
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()


class WorkerProcess:
    """One ``profilestream worker`` subprocess and its namespace."""

    def __init__(
        self,
        kafka_bootstrap: str,
        redis_url: str,
        *,
        tokens: dict[str, list[str]] | None = None,
        namespace: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.kafka_bootstrap = kafka_bootstrap
        self.redis_url = redis_url
        self.namespace = namespace or unique("t")
        self.prefix = f"{self.namespace}."
        self.group = f"{self.namespace}-workers"
        self.redis_prefix = self.namespace
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tokens = tokens or {}
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        # Not under .services/: that folder belongs to scripts/services.py,
        # which refuses a state dir holding files it did not make.
        self.log_path = ROOT / ".worker-logs" / f"{self.namespace}.log"
        self.redis = Redis.from_url(redis_url)
        self.membership = TopicReader(kafka_bootstrap, self.prefix + MEMBERSHIP_TOPIC)
        self.deadletters = TopicReader(kafka_bootstrap, self.prefix + DEADLETTER_TOPIC)
        self._producer: AIOKafkaProducer | None = None
        self._http: aiohttp.ClientSession | None = None

    # -- lifecycle -------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "KAFKA_BOOTSTRAP": self.kafka_bootstrap,
                "REDIS_URL": self.redis_url,
                "TOPIC_PREFIX": self.prefix,
                "CONSUMER_GROUP": self.group,
                "REDIS_PREFIX": self.redis_prefix,
                "HTTP_HOST": "127.0.0.1",
                "HTTP_PORT": str(self.port),
                "CLOCK": "manual",
                "ADMIN_TOKEN": ADMIN_TOKEN,
                "API_TOKENS": orjson.dumps(self.tokens).decode(),
                "CLOCK_TICK_SECONDS": "0.2",
                "LOG_LEVEL": "DEBUG",
            }
        )
        env.update(self.extra_env)
        return env

    def spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker"],
                cwd=ROOT,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def start(self) -> None:
        self._http = aiohttp.ClientSession()
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.kafka_bootstrap, acks="all", linger_ms=1
        )
        await self._producer.start()
        self.spawn()
        await self.wait_ready()
        await self.membership.start()
        await self.deadletters.start()

    async def wait_ready(self, wait_seconds: float = 60) -> None:
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker exited; log tail:\n{self.log_tail()}")
            try:
                status, _ = await self.get("/readyz")
                if status == 200:
                    return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
        raise TimeoutError(f"worker not ready; log tail:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(
            self.log_path.read_text(errors="replace").splitlines()[-lines:]
        )

    def terminate(self, timeout: float = 20) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    async def stop(self) -> None:
        self.terminate()
        await self.membership.stop()
        await self.deadletters.stop()
        if self._producer is not None:
            await self._producer.stop()
        if self._http is not None:
            await self._http.close()
        await self.redis.aclose()

    # -- HTTP ------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = ADMIN_TOKEN,
        raw: bytes | None = None,
    ) -> tuple[int, Any]:
        assert self._http is not None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = (
            raw if raw is not None else (None if body is None else orjson.dumps(body))
        )
        async with self._http.request(
            method,
            self.url + path,
            data=data,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=120),
        ) as resp:
            content = await resp.read()
            try:
                return resp.status, orjson.loads(content)
            except orjson.JSONDecodeError:
                return resp.status, content

    async def get(self, path: str, token: str | None = ADMIN_TOKEN) -> tuple[int, Any]:
        return await self.request("GET", path, token=token)

    async def contact(self, tenant: str, contact: str) -> dict[str, Any]:
        status, body = await self.get(f"/v1/tenants/{tenant}/contacts/{contact}")
        assert status == 200, body
        result: dict[str, Any] = body
        return result

    async def now(self) -> datetime:
        status, body = await self.get("/v1/admin/clock")
        assert status == 200, body
        return datetime.fromisoformat(body["now"].replace("Z", "+00:00"))

    async def set_clock(self, instant: datetime) -> None:
        status, body = await self.request(
            "POST", "/v1/admin/clock", {"now": rfc(instant)}
        )
        assert status == 200, body

    async def advance(self, **delta: float) -> datetime:
        target = await self.now() + timedelta(**delta)
        await self.set_clock(target)
        await self.settle()
        return target

    async def set_timezone(self, tenant: str, tz: str) -> None:
        status, body = await self.request(
            "PUT", f"/v1/tenants/{tenant}", {"timezone": tz}
        )
        assert status == 200, body

    # -- Kafka in ----------------------------------------------------------------

    async def publish(self, events: Iterable[dict[str, Any]]) -> None:
        assert self._producer is not None
        futures = [
            await self._producer.send(
                topic_for(e, self.prefix), orjson.dumps(e), key=record_key(e)
            )
            for e in events
        ]
        await asyncio.gather(*futures)

    async def publish_raw(self, topic: str, value: bytes, key: bytes | None) -> None:
        assert self._producer is not None
        await self._producer.send_and_wait(self.prefix + topic, value, key=key)

    # -- waiting -------------------------------------------------------------------

    async def drain(self, wait_seconds: float = 60) -> None:
        """Wait until the group has committed every record now on the topics."""
        topics = [self.prefix + t for t in INPUT_TOPICS]
        ends = await end_offsets(self.kafka_bootstrap, topics)
        admin = AIOKafkaAdminClient(bootstrap_servers=self.kafka_bootstrap)
        await admin.start()
        try:
            deadline = time.monotonic() + wait_seconds
            while True:
                committed = await admin.list_consumer_group_offsets(self.group)
                behind = {
                    tp: end
                    for tp, end in ends.items()
                    if end > 0 and (tp not in committed or committed[tp].offset < end)
                }
                if not behind:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not drained: {behind}\n{self.log_tail()}")
                await asyncio.sleep(0.1)
        finally:
            await admin.close()

    async def due_wakeups(self) -> int:
        now_us = int((await self.now()).timestamp() * 1_000_000)
        total = 0
        for shard in range(16):
            total += int(
                await self.redis.zcount(
                    f"{self.redis_prefix}:w:{{{shard}}}", "-inf", now_us
                )
            )
        return total

    async def pending_outboxes(self) -> int:
        keys = [k async for k in self.redis.scan_iter(f"{self.redis_prefix}:o:*")]
        return len(keys)

    async def settle(self, wait_seconds: float = 30) -> None:
        """Input drained, no wake-up due, no outbox waiting for Kafka."""
        await self.drain(wait_seconds)
        await wait_until(
            self._quiet, wait_seconds, lambda: f"still busy\n{self.log_tail()}"
        )
        await self.membership.catch_up(wait_seconds)

    async def _quiet(self) -> bool:
        return await self.due_wakeups() == 0 and await self.pending_outboxes() == 0

    def changes(self, tenant: str) -> list[dict[str, Any]]:
        out = []
        for rec in self.membership.records:
            value = orjson.loads(rec.value)
            if value["tenant_id"] == tenant:
                out.append(value)
        return out

    def dead_letters(self) -> list[Any]:
        return list(self.deadletters.records)


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    for _ in range(50):
        await consumer._client.force_metadata_update()
        found = consumer.partitions_for_topic(topic)
        if found:
            return set(found)
        await asyncio.sleep(0.1)
    raise TimeoutError(f"topic {topic} has no partitions")


async def end_offsets(bootstrap: str, topics: list[str]) -> dict[TopicPartition, int]:
    """The end offset of every partition of ``topics``, now."""
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await probe.start()
    try:
        partitions = [
            TopicPartition(t, p)
            for t in topics
            for p in (probe.partitions_for_topic(t) or await _partitions(probe, t))
        ]
        ends: dict[TopicPartition, int] = await probe.end_offsets(partitions)
        return ends
    finally:
        await probe.stop()


async def wait_until(
    check: Callable[[], Awaitable[bool]],
    wait_seconds: float = 30,
    message: Callable[[], str] = lambda: "condition not met",
) -> None:
    deadline = time.monotonic() + wait_seconds
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(message())
        await asyncio.sleep(0.1)


def fold(changes: Iterable[dict[str, Any]]) -> dict[str, set[str]]:
    """Segment id -> contact ids, by folding membership changes in order."""
    members: dict[str, set[str]] = {}
    seen: set[str] = set()
    for change in changes:
        if change["event_id"] in seen:
            continue
        seen.add(change["event_id"])
        group = members.setdefault(change["segment_id"], set())
        if change["change"] == "entered":
            group.add(change["contact_id"])
        else:
            group.discard(change["contact_id"])
    return members
