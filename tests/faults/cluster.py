"""Several real worker processes in one namespace, and the means to break them.

``Cluster`` starts ``profilestream worker`` subprocesses through
``tests.harness.WorkerProcess`` (one topic prefix, consumer group and Redis
prefix for all of them, so they share the partitions), and kills (SIGKILL),
stops (SIGTERM), pauses (SIGSTOP) and resumes (SIGCONT) them. It publishes
records and notes where each landed, reads the membership and dead-letter
topics from the start, scrapes every worker's ``/metrics`` in the background
(so counters of a killed process are known up to about a second before it
died), and waits for the group to settle: every input record committed, no
wake-up due, no outbox waiting for Kafka, both readers at the end of their
topics. Every wait is on a condition, with a deadline.

Workers run with ``KAFKA_SESSION_TIMEOUT_SECONDS=6``: both the ingest
consumer's group and faust's control group then expire a killed worker within
6 s, so a restart after kill -9 does not wait for the defaults.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from streams.kafka import INPUT_TOPICS
from tests.faults.stream import Record
from tests.harness import ADMIN_TOKEN, ROOT, TopicReader, WorkerProcess, rfc, unique

MEMBERSHIP_TOPIC = "segments.membership"
DEADLETTER_TOPIC = "engagement.deadletter"
SERVICES_SCRIPT = ROOT / "scripts" / "services.py"

#: Keeps a restart after kill -9 to a few seconds (see the module docstring).
FAST_FAILOVER_ENV = {
    "KAFKA_SESSION_TIMEOUT_SECONDS": "6",
    "LOG_LEVEL": "INFO",
}

_METRIC = re.compile(r"^(profilestream_[a-z_]+_total)(\{[^}]*\})? (\S+)$", re.MULTILINE)


class Timeout(AssertionError):
    """A condition a fault run waits for did not come in time."""


async def wait_for(
    check: Callable[[], Awaitable[bool]],
    seconds: float,
    what: Callable[[], str],
    interval: float = 0.2,
) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise Timeout(what())
        await asyncio.sleep(interval)


@dataclass
class Node:
    """One worker slot of the cluster; a slot keeps its port across restarts."""

    index: int
    worker: WorkerProcess
    paused: bool = False
    incarnations: int = 0
    starting: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return f"w{self.index}"

    @property
    def pid(self) -> int | None:
        proc = self.worker.proc
        return None if proc is None else proc.pid

    @property
    def alive(self) -> bool:
        proc = self.worker.proc
        return proc is not None and proc.poll() is None

    @property
    def serving(self) -> bool:
        return self.alive and not self.paused


@dataclass
class TopicTail(TopicReader):
    """``TopicReader`` through broker restarts, keeping each offset once."""

    next_offsets: dict[int, int] = field(default_factory=dict)
    redelivered: int = 0
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batch = await self._consumer.getmany(timeout_ms=200)
            except KafkaError:
                await asyncio.sleep(0.5)  # the broker is restarting
                continue
            for tp, records in batch.items():
                for record in records:
                    # The client may hand a record over again (seen after
                    # leader changes); keep each offset of the topic once.
                    if record.offset < self.next_offsets.get(tp.partition, 0):
                        self.redelivered += 1
                        continue
                    self.records.append(record)
                    self.next_offsets[tp.partition] = record.offset + 1
                    self._arrived.set()

    async def wait_for_more(self, count: int, seconds: float) -> None:
        """Return as soon as more than ``count`` records were read."""
        async with asyncio.timeout(seconds):
            while len(self.records) <= count:
                self._arrived.clear()
                await self._arrived.wait()

    def caught_up(self, ends: dict[int, int]) -> bool:
        return all(self.next_offsets.get(p, 0) >= end for p, end in ends.items())

    def values(self) -> list[dict[str, Any]]:
        return [orjson.loads(r.value) for r in self.records]


@dataclass
class Scrapes:
    """The last ``/metrics`` counters seen of every worker process (by pid)."""

    last: dict[int, dict[str, float]] = field(default_factory=dict)

    def total(self, name: str) -> float:
        return sum(values.get(name, 0.0) for values in self.last.values())


class Cluster:
    def __init__(
        self,
        kafka_bootstrap: str,
        redis_url: str,
        *,
        namespace: str | None = None,
        worker_env: dict[str, str] | None = None,
        services_dir: str | None = None,
    ) -> None:
        self.kafka_bootstrap = kafka_bootstrap
        self.redis_url = redis_url
        self.namespace = namespace or unique("flt")
        self.prefix = f"{self.namespace}."
        self.group = f"{self.namespace}-workers"
        self.worker_env = {**FAST_FAILOVER_ENV, **(worker_env or {})}
        self.services_dir = services_dir
        self.nodes: list[Node] = []
        self.redis = Redis.from_url(redis_url)
        self.membership = TopicTail(kafka_bootstrap, self.prefix + MEMBERSHIP_TOPIC)
        self.deadletters = TopicTail(kafka_bootstrap, self.prefix + DEADLETTER_TOPIC)
        self.scrapes = Scrapes()
        self.log: list[str] = []
        self.started = time.monotonic()
        self._http: aiohttp.ClientSession | None = None
        self._producer: AIOKafkaProducer | None = None
        self._scraper: asyncio.Task[None] | None = None
        self._probe: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None

    # -- lifecycle ---------------------------------------------------------------

    async def start(self, workers: int = 1) -> None:
        self._http = aiohttp.ClientSession()
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.kafka_bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
        )
        await self._producer.start()
        for _ in range(workers):
            await self.add_node()
        await self.membership.start()
        await self.deadletters.start()
        self._scraper = asyncio.create_task(self._scrape_forever())

    async def close(self, cleanup: bool = True) -> None:
        for node in self.nodes:
            if node.starting is not None:
                node.starting.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await node.starting
            if node.paused and node.alive:
                self.resume(node)
        await asyncio.gather(*(self.stop(n) for n in self.nodes if n.alive))
        if self._scraper is not None:
            self._scraper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scraper
        await self.membership.stop()
        await self.deadletters.stop()
        await self._drop_probe_clients()
        if self._producer is not None:
            await self._producer.stop()
        if self._http is not None:
            await self._http.close()
        if cleanup:
            with contextlib.suppress(RedisError):
                keys = [k async for k in self.redis.scan_iter(f"{self.namespace}:*")]
                for i in range(0, len(keys), 500):
                    await self.redis.delete(*keys[i : i + 500])
            # faust's data dir, created in the worker's working directory.
            shutil.rmtree(ROOT / f"{self.group}-control-data", ignore_errors=True)
        for node in self.nodes:
            await node.worker.redis.aclose()
        await self.redis.aclose()

    def note(self, text: str) -> None:
        line = f"+{time.monotonic() - self.started:6.1f}s {text}"
        self.log.append(line)
        if os.environ.get("FAULTS_VERBOSE"):
            print(line, file=sys.stderr, flush=True)

    async def add_node(self, wait: bool = True) -> Node:
        worker = WorkerProcess(
            self.kafka_bootstrap,
            self.redis_url,
            namespace=self.namespace,
            extra_env=self.worker_env,
        )
        node = Node(len(self.nodes) + 1, worker)
        worker.log_path = worker.log_path.with_name(f"{self.namespace}-{node.name}.log")
        self.nodes.append(node)
        await self.spawn(node, wait)
        return node

    async def spawn(self, node: Node, wait: bool = True) -> None:
        assert not node.alive, f"{node.name} is running"
        node.worker.spawn()
        node.paused = False
        node.incarnations += 1
        self.note(f"{node.name} started (pid {node.pid})")
        if wait:
            await self.wait_ready(node)

    def restart_soon(self, node: Node, delay: float = 0.0) -> None:
        """Start ``node`` again after ``delay`` s, in the background."""

        async def later() -> None:
            await asyncio.sleep(delay)
            await self.spawn(node)

        node.starting = asyncio.create_task(later())

    async def cancel_start(self, node: Node) -> None:
        """Stop waiting for a start in progress (the process may be up)."""
        task, node.starting = node.starting, None
        if task is None:
            return
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def wait_started(self) -> None:
        """Wait for every background restart, and raise what failed."""
        for node in self.nodes:
            if node.starting is not None:
                task, node.starting = node.starting, None
                await task

    async def wait_ready(self, node: Node, seconds: float = 90) -> None:
        """``/readyz`` answers 200; or, while another worker serves, Redis and
        Kafka are ready (the newcomer is still joining the group)."""

        async def ready() -> bool:
            if not node.alive:
                raise RuntimeError(f"{node.name} exited:\n{node.worker.log_tail()}")
            try:
                status, body = await self._call(node, "GET", "/readyz", None, 5)
            except (aiohttp.ClientError, OSError):
                return False
            if status == 200:
                return True
            checks = body.get("checks", {}) if isinstance(body, dict) else {}
            others = [n for n in self.serving() if n is not node and n.starting is None]
            return bool(others and checks.get("redis") and checks.get("kafka"))

        await wait_for(
            ready, seconds, lambda: f"{node.name} not ready\n{node.worker.log_tail()}"
        )

    def kill(self, node: Node) -> None:
        """SIGKILL: no clean-up, no leaving the group, nothing flushed."""
        assert node.worker.proc is not None
        pid = node.pid
        node.worker.proc.kill()
        node.worker.proc.wait()
        node.paused = False
        self.note(f"kill -9 {node.name} (pid {pid})")

    async def stop(self, node: Node) -> None:
        """SIGTERM and wait: the worker finishes its batch and leaves the group."""
        await self.scrape(node)
        pid = node.pid
        await asyncio.to_thread(node.worker.terminate, 30)
        self.note(f"SIGTERM {node.name} (pid {pid})")

    def pause(self, node: Node) -> None:
        assert node.worker.proc is not None
        node.worker.proc.send_signal(signal.SIGSTOP)
        node.paused = True
        self.note(f"SIGSTOP {node.name} (pid {node.pid})")

    def resume(self, node: Node) -> None:
        assert node.worker.proc is not None
        node.worker.proc.send_signal(signal.SIGCONT)
        node.paused = False
        self.note(f"SIGCONT {node.name} (pid {node.pid})")

    def serving(self) -> list[Node]:
        return [n for n in self.nodes if n.serving]

    # -- shared services (a private pair only) -------------------------------------

    async def service(self, action: str, service: str) -> None:
        """``scripts/services.py <action> <service>`` on the private services."""
        if not self.services_dir:
            raise RuntimeError("restarting services needs a private services dir")
        env = {**os.environ, "PROFILESTREAM_SERVICES_DIR": self.services_dir}
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(SERVICES_SCRIPT),
            action,
            service,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"services.py {action} {service}: {err.decode()}")
        self.note(f"{service} {action} took {time.monotonic() - started:.1f} s")

    # -- HTTP ----------------------------------------------------------------------

    async def _call(
        self, node: Node, method: str, path: str, body: Any, seconds: float
    ) -> tuple[int, Any]:
        assert self._http is not None
        async with self._http.request(
            method,
            node.worker.url + path,
            data=None if body is None else orjson.dumps(body),
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=aiohttp.ClientTimeout(total=seconds),
        ) as resp:
            content = await resp.read()
            try:
                return resp.status, orjson.loads(content)
            except orjson.JSONDecodeError:
                return resp.status, content

    async def request(
        self, method: str, path: str, body: Any = None, seconds: float = 60
    ) -> tuple[int, Any]:
        """Through any serving worker; retried while none answers (5xx too)."""
        deadline = time.monotonic() + seconds
        while True:
            for node in self.serving():
                try:
                    status, reply = await self._call(node, method, path, body, 30)
                except (aiohttp.ClientError, TimeoutError):
                    continue
                if status < 500:
                    return status, reply
            if time.monotonic() > deadline:
                raise Timeout(f"no worker answered {method} {path}")
            await asyncio.sleep(0.2)

    async def now(self) -> datetime:
        status, body = await self.request("GET", "/v1/admin/clock")
        assert status == 200, body
        return datetime.fromisoformat(body["now"].replace("Z", "+00:00"))

    async def set_clock(self, instant: datetime) -> None:
        status, body = await self.request(
            "POST", "/v1/admin/clock", {"now": rfc(instant)}
        )
        assert status == 200, body
        self.note(f"clock set to {rfc(instant)}")

    async def set_timezone(self, tenant: str, zone: str) -> None:
        status, body = await self.request(
            "PUT", f"/v1/tenants/{tenant}", {"timezone": zone}
        )
        assert status == 200, body

    async def create_segment(self, tenant: str, name: str, rule: Any) -> str:
        status, body = await self.request(
            "POST",
            f"/v1/tenants/{tenant}/segments",
            {"name": name, "kind": "active", "rule": rule},
        )
        assert status == 201, body
        segment_id: str = body["id"]
        return segment_id

    async def contact(self, tenant: str, contact: str) -> tuple[int, Any]:
        return await self.request("GET", f"/v1/tenants/{tenant}/contacts/{contact}")

    async def members(self, tenant: str, segment: str) -> tuple[set[str], int]:
        """Every page of the members endpoint: the ids and the reported count."""
        out: set[str] = set()
        count = -1
        cursor: str | None = None
        base = f"/v1/tenants/{tenant}/segments/{segment}/members?limit=200"
        for _ in range(10_000):
            path = base if cursor is None else f"{base}&cursor={cursor}"
            status, body = await self.request("GET", path)
            assert status == 200, body
            out.update(body["members"])
            count = body["count"]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        return out, count

    # -- metrics -------------------------------------------------------------------

    async def scrape(self, node: Node) -> None:
        pid = node.pid
        if pid is None or not node.serving:
            return
        try:
            status, body = await self._call(node, "GET", "/metrics", None, 5)
        except (aiohttp.ClientError, OSError):  # TimeoutError is an OSError
            return
        if status != 200 or not isinstance(body, bytes):
            return
        values: dict[str, float] = defaultdict(float)
        for name, _, value in _METRIC.findall(body.decode()):
            values[name] += float(value)
        self.scrapes.last[pid] = dict(values)

    async def scrape_all(self) -> None:
        for node in list(self.nodes):
            await self.scrape(node)

    async def _scrape_forever(self) -> None:
        while True:
            await self.scrape_all()
            await asyncio.sleep(1)

    # -- Kafka in ------------------------------------------------------------------

    async def publish(self, records: Sequence[Record], seconds: float = 120) -> None:
        """Publish in order and note partition and offset of each record.

        The producer is idempotent, so its own retries never duplicate a
        record; a send that fails outright (the broker away for longer than
        the producer waits) is sent again, which may land a second copy.
        """
        assert self._producer is not None
        deadline = time.monotonic() + seconds
        pending = list(records)
        while pending:
            try:
                futures = [
                    await self._producer.send(self.prefix + r.topic, r.value, key=r.key)
                    for r in pending
                ]
                results = await asyncio.gather(*futures, return_exceptions=True)
            except KafkaError as exc:
                results = [exc] * len(pending)
            failed = []
            for record, result in zip(pending, results, strict=True):
                if isinstance(result, BaseException):
                    failed.append(record)
                else:
                    record.partition, record.offset = result.partition, result.offset
            if failed and time.monotonic() > deadline:
                raise Timeout(f"{len(failed)} records not published")
            if failed:
                self.note(f"{len(failed)} sends failed; sending them again")
                await asyncio.sleep(1)
            pending = failed

    # -- waiting for the group -----------------------------------------------------

    async def _probe_clients(self) -> tuple[AIOKafkaConsumer, AIOKafkaAdminClient]:
        if self._probe is None:
            probe = AIOKafkaConsumer(
                bootstrap_servers=self.kafka_bootstrap, metadata_max_age_ms=1000
            )
            await probe.start()
            self._probe = probe
        if self._admin is None:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.kafka_bootstrap)
            await admin.start()
            self._admin = admin
        return self._probe, self._admin

    async def _drop_probe_clients(self) -> None:
        probe, admin, self._probe, self._admin = self._probe, self._admin, None, None
        with contextlib.suppress(Exception):
            if probe is not None:
                await probe.stop()
        with contextlib.suppress(Exception):
            if admin is not None:
                await admin.close()

    async def _end_offsets(self, topics: Sequence[str]) -> dict[TopicPartition, int]:
        probe, _ = await self._probe_clients()
        partitions = []
        for topic in topics:
            found = probe.partitions_for_topic(topic)
            for _ in range(50):
                if found:
                    break
                await probe._client.force_metadata_update()
                found = probe.partitions_for_topic(topic)
                await asyncio.sleep(0.1)
            partitions += [TopicPartition(topic, p) for p in found or ()]
        ends: dict[TopicPartition, int] = await probe.end_offsets(partitions)
        return ends

    async def lag(self) -> int:
        """Input records on the topics not yet committed by the group."""
        ends = await self._end_offsets([self.prefix + t for t in INPUT_TOPICS])
        _, admin = await self._probe_clients()
        committed = await admin.list_consumer_group_offsets(self.group)
        behind = 0
        for tp, end in ends.items():
            done = committed[tp].offset if tp in committed else 0
            behind += max(0, end - max(done, 0))
        return behind

    async def due_and_outboxes(self) -> tuple[int, int]:
        """Wake-ups due at the test clock, and outboxes waiting for Kafka."""
        raw = await self.redis.get(f"{self.namespace}:clock")
        now = int(raw) if raw is not None else int(time.time() * 1_000_000)
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(16):
            pipe.zcount(f"{self.namespace}:w:{{{shard}}}", "-inf", now)
        due = sum(await pipe.execute())
        pattern = f"{self.namespace}:o:*"
        outboxes = [k async for k in self.redis.scan_iter(pattern, count=2000)]
        return due, len(outboxes)

    async def due_members(self) -> list[str]:
        """``tenant:contact`` of every wake-up due at the test clock."""
        raw = await self.redis.get(f"{self.namespace}:clock")
        now = int(raw) if raw is not None else int(time.time() * 1_000_000)
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(16):
            pipe.zrangebyscore(f"{self.namespace}:w:{{{shard}}}", "-inf", now)
        rows = await pipe.execute()
        return [m.decode() for row in rows for m in row]

    async def progress(self, members: Sequence[str]) -> tuple[int, int]:
        """Of ``members``: how many wake-ups are still due, how many outboxes wait.

        One round trip, so it can be polled tightly to kill at a chosen moment.
        """
        raw = await self.redis.get(f"{self.namespace}:clock")
        now = int(raw) if raw is not None else int(time.time() * 1_000_000)
        pipe = self.redis.pipeline(transaction=False)
        for member in members:
            tenant, _, contact = member.partition(":")
            pipe.exists(f"{self.namespace}:o:{{{tenant}:{contact}}}")
        for shard in range(16):
            pipe.zcount(f"{self.namespace}:w:{{{shard}}}", "-inf", now)
        results = await pipe.execute()
        return sum(results[len(members) :]), sum(results[: len(members)])

    async def settle(self, seconds: float = 120) -> None:
        """Everything published so far is applied, swept and read back."""
        state: dict[str, Any] = {}

        async def settled() -> bool:
            try:
                state["lag"] = lag = await self.lag()
                if lag:
                    return False
                state["due, outboxes"] = quiet = await self.due_and_outboxes()
                if quiet != (0, 0):
                    return False
                for tail in (self.membership, self.deadletters):
                    ends = await self._end_offsets([tail.topic])
                    if not tail.caught_up({tp.partition: e for tp, e in ends.items()}):
                        state["reader"] = tail.topic
                        return False
            except (KafkaError, RedisError, OSError) as exc:
                state["error"] = repr(exc)
                await self._drop_probe_clients()
                return False
            return True

        def describe() -> str:
            tails = "\n".join(
                f"--- {n.name}\n{n.worker.log_tail(15)}" for n in self.nodes
            )
            return f"not settled after {seconds} s: {state}\n{tails}"

        await wait_for(settled, seconds, describe, interval=0.3)

    async def reset_group_to_earliest(self, seconds: float = 60) -> None:
        """Commit offset 0 on every input partition for the (stopped) group."""
        assert not any(n.alive for n in self.nodes), "stop the workers first"
        ends = await self._end_offsets([self.prefix + t for t in INPUT_TOPICS])
        deadline = time.monotonic() + seconds
        while True:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.kafka_bootstrap,
                group_id=self.group,
                enable_auto_commit=False,
            )
            await consumer.start()
            try:
                consumer.assign(list(ends))
                await consumer.commit(dict.fromkeys(ends, 0))
                break
            except KafkaError as exc:
                if time.monotonic() > deadline:
                    raise
                self.note(f"offset reset refused ({exc}); retrying")
                await asyncio.sleep(1)
            finally:
                await consumer.stop()
        self.note(f"group {self.group} reset to offset 0 on {len(ends)} partitions")

    def log_files(self) -> list[Path]:
        return [n.worker.log_path for n in self.nodes]

    def grep_logs(self, needle: str) -> int:
        found = 0
        for path in self.log_files():
            if path.exists():
                found += path.read_text(errors="replace").count(needle)
        return found
