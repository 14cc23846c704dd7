"""Plumbing shared by the measurements of ``benchmarks/run.py``.

Worker subprocesses started the way ``tests/harness.py`` starts them (own
topic prefix, consumer group, Redis prefix and HTTP port), Kafka and Redis
helpers, and readers of ``/proc`` for CPU time and memory. Nothing here is
product code; the worker is only driven through its public surfaces and
observed from outside (``/proc``, its log, Kafka, Redis ``INFO``), plus the
request counter of ``benchmarks/instrument/sitecustomize.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import platform
import re
import resource
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parent.parent
INSTRUMENT_DIR = Path(__file__).resolve().parent / "instrument"
ADMIN_TOKEN = "bench-admin-token"
CLK_TCK = os.sysconf("SC_CLK_TCK")

#: ``streams.logs`` format: "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
BATCH_LINE = re.compile(
    rb"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) DEBUG\s+streams\.ingest: "
    rb"Batch of (\d+) records in ([\d.]+) ms",
    re.MULTILINE,
)
ASSIGNED_LINE = re.compile(
    rb"streams\.ingest: Partitions assigned: (.*)$", re.MULTILINE
)
SWEEP_LINE = re.compile(
    rb"Clock sweep: (\d+) contacts due, (\d+) membership changes, ([\d.]+) s"
)


def log(message: str) -> None:
    stamp = datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_time(stamp: bytes) -> float:
    """Epoch seconds of a ``streams.logs`` asctime (local time, ms)."""
    parsed = datetime.strptime(stamp.decode(), "%Y-%m-%d %H:%M:%S,%f")
    return parsed.timestamp()


# -- /proc ------------------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def machine_busy() -> tuple[int, int, int]:
    """(busy, stolen, total) jiffies of all CPUs, from /proc/stat."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(x) for x in parts[:8]] + [0] * (8 - len(parts[:8]))
    idle = values[3] + values[4]
    total = sum(values)
    return total - idle - values[7], values[7], total


def busy_fraction(
    before: tuple[int, int, int], after: tuple[int, int, int]
) -> dict[str, float]:
    """Share of all CPUs' time busy (user, system, interrupts) and stolen by
    the hypervisor between two ``machine_busy`` readings."""
    total = after[2] - before[2]
    if not total:
        return {"busy": 0.0, "steal": 0.0}
    return {
        "busy": round((after[0] - before[0]) / total, 3),
        "steal": round((after[1] - before[1]) / total, 3),
    }


Census = tuple[float, dict[int, tuple[str, int, int]], float]


def _own_cpu() -> float:
    """CPU seconds of this process and of its children that were waited for."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def cpu_census() -> Census:
    """(monotonic time, {pid: (comm, ppid, utime+stime ticks)}, own CPU s)."""
    table: dict[int, tuple[str, int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        table[int(entry.name)] = (
            comm,
            int(fields[1]),
            int(fields[11]) + int(fields[12]),
        )
    return time.monotonic(), table, _own_cpu()


def census_delta(before: Census, after: Census) -> dict[str, float]:
    """CPU cores used between two censuses by: this benchmark and its children
    ("ours": the finished children through getrusage, the live ones through
    /proc), the Kafka and Redis servers (``java``, ``redis-server``, whoever
    uses them), and every other process (those that started and ended in
    between are missed, so this is a lower bound)."""
    me = os.getpid()
    seconds = after[0] - before[0]
    ticks = {"ours": 0, "services": 0, "others": 0}
    for pid, (comm, ppid, used) in after[1].items():
        if pid == me:
            continue
        prev = before[1].get(pid)
        delta = used - (prev[2] if prev and prev[0] == comm else 0)
        if comm in ("java", "redis-server"):
            ticks["services"] += delta
        elif ppid == me:
            ticks["ours"] += delta
        else:
            ticks["others"] += delta
    cores = {k: v / CLK_TCK / seconds for k, v in ticks.items()}
    cores["ours"] += (after[2] - before[2]) / seconds
    return {k: round(v, 2) for k, v in cores.items()}


def machine_info() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "loadavg_start": loadavg(),
    }


def loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


# -- Kafka ----------------------------------------------------------------------


async def create_topics(bootstrap: str, names: Iterable[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(n, partitions, 1) for n in missing])
    finally:
        await admin.close()


async def end_offsets(
    bootstrap: str, topics: Iterable[str]
) -> dict[TopicPartition, int]:
    """End offset of every partition of ``topics`` (waits for metadata)."""
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await probe.start()
    try:
        partitions: list[TopicPartition] = []
        for topic in topics:
            found: set[int] | None = None
            for _ in range(100):
                found = probe.partitions_for_topic(topic)
                if found:
                    break
                await probe._client.force_metadata_update()
                await asyncio.sleep(0.1)
            if not found:
                raise TimeoutError(f"topic {topic} has no partitions")
            partitions += [TopicPartition(topic, p) for p in sorted(found)]
        ends: dict[TopicPartition, int] = await probe.end_offsets(partitions)
        return ends
    finally:
        await probe.stop()


class GroupWatch:
    """Polls a consumer group's committed offsets."""

    def __init__(self, bootstrap: str, group: str) -> None:
        self.admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        self.group = group
        self._coordinator: int | None = None

    async def start(self) -> None:
        await self.admin.start()

    async def close(self) -> None:
        await self.admin.close()

    async def committed(self) -> dict[TopicPartition, int]:
        if self._coordinator is None:
            self._coordinator = await self.admin.find_coordinator(self.group)
        raw = await self.admin.list_consumer_group_offsets(
            self.group, group_coordinator_id=self._coordinator
        )
        return {tp: meta.offset for tp, meta in raw.items()}

    async def committed_total(self, ends: dict[TopicPartition, int]) -> int:
        committed = await self.committed()
        return sum(min(max(committed.get(tp, 0), 0), end) for tp, end in ends.items())


async def read_range(
    bootstrap: str, start: dict[TopicPartition, int], end: dict[TopicPartition, int]
) -> list[tuple[int, bytes]]:
    """(timestamp ms, value) of every record from ``start`` (default 0) up to
    ``end`` of each partition in ``end``."""
    wanted = {tp: off for tp, off in end.items() if off > start.get(tp, 0)}
    if not wanted:
        return []
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    out: list[tuple[int, bytes]] = []
    try:
        consumer.assign(list(wanted))
        for tp in wanted:
            consumer.seek(tp, start.get(tp, 0))
        left = set(wanted)
        deadline = time.monotonic() + 300
        while left:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {sorted(map(str, left))}")
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for tp, records in batch.items():
                for r in records:
                    if r.offset < wanted[tp]:
                        out.append((r.timestamp, r.value))
                if tp in left and await consumer.position(tp) >= wanted[tp]:
                    left.discard(tp)
                    consumer.pause(tp)
        return out
    finally:
        await consumer.stop()


async def delete_topics_with_prefix(bootstrap: str, prefix: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        for i in range(0, len(names), 50):
            await admin.delete_topics(names[i : i + 50])
        return names
    finally:
        await admin.close()


@dataclass
class TopicCollector:
    """Reads a topic in the background, keeping (timestamp_ms, value) pairs."""

    bootstrap: str
    topic: str
    from_end: bool = False
    records: list[tuple[int, bytes]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="latest" if self.from_end else "earliest",
            enable_auto_commit=False,
            metadata_max_age_ms=1000,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        await self._consumer.start()
        if self.from_end:
            # Pin the position now, so nothing published after start() is missed.
            for _ in range(100):
                if self._consumer.assignment():
                    break
                await asyncio.sleep(0.05)
            for tp in self._consumer.assignment():
                await self._consumer.position(tp)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=200, max_records=10_000)
            for recs in batch.values():
                self.records.extend((r.timestamp, r.value) for r in recs)

    async def caught_up(self) -> bool:
        """True when the reader's position is at the end of every partition."""
        assert self._consumer is not None
        parts = self._consumer.assignment()
        if not parts:
            return False
        ends = await self._consumer.end_offsets(list(parts))
        for tp in parts:
            if await self._consumer.position(tp) < ends[tp]:
                return False
        return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()


# -- Redis ----------------------------------------------------------------------


@dataclass(frozen=True)
class RedisSnapshot:
    at: float
    cpu_seconds: float
    commands: dict[str, int]
    total_commands: int

    def delta(self, later: RedisSnapshot) -> dict[str, Any]:
        names = set(self.commands) | set(later.commands)
        per = {
            n: later.commands.get(n, 0) - self.commands.get(n, 0) for n in sorted(names)
        }
        return {
            "seconds": later.at - self.at,
            "cpu_seconds": later.cpu_seconds - self.cpu_seconds,
            "calls": sum(per.values()),
            "per_command": {n: v for n, v in per.items() if v},
            "total_commands_processed": later.total_commands - self.total_commands,
        }


async def redis_snapshot(redis: Redis) -> RedisSnapshot:
    cpu = await redis.info("cpu")
    stats = await redis.info("commandstats")
    totals = await redis.info("stats")
    commands = {
        name.removeprefix("cmdstat_"): int(v["calls"])
        for name, v in stats.items()
        if isinstance(v, dict)
    }
    return RedisSnapshot(
        at=time.time(),
        cpu_seconds=float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
        commands=commands,
        total_commands=int(totals["total_commands_processed"]),
    )


async def unlink_prefix(redis: Redis, prefix: str) -> int:
    """SCAN + UNLINK every key whose name starts with ``prefix``."""
    removed = 0
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=f"{prefix}*", count=5000):
        batch.append(key)
        if len(batch) >= 2000:
            removed += int(await redis.unlink(*batch))
            batch.clear()
    if batch:
        removed += int(await redis.unlink(*batch))
    return removed


def redis_address(url: str) -> dict[str, Any]:
    parsed = urlparse(url)
    db = parsed.path.strip("/") or "0"
    return {
        "host": parsed.hostname or "127.0.0.1",
        "port": parsed.port or 6379,
        "db": int(db),
        "password": parsed.password,
    }


class PrivateRedis:
    """A redis-server of our own, persistence as the shared one (AOF everysec)."""

    def __init__(self, out_dir: Path) -> None:
        self.dir = out_dir / "redis-data"
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.dir.mkdir(parents=True, exist_ok=True)
        return subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
            ],
            stdout=(self.dir / "redis.log").open("ab"),
            stderr=subprocess.STDOUT,
        )

    async def start(self) -> None:
        self.proc = self._spawn()
        client = Redis.from_url(self.url)
        try:
            for _ in range(100):
                with contextlib.suppress(Exception):
                    if await client.ping():
                        return
                await asyncio.sleep(0.1)
            raise RuntimeError("private redis-server did not start")
        finally:
            await client.aclose()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


# -- workers ----------------------------------------------------------------------


@dataclass
class Services:
    bootstrap: str
    redis_url: str


class WorkerProc:
    """One ``python -m streams.cli worker`` subprocess, as tests/harness.py runs it.

    The environment adds ``PYTHONPATH=benchmarks/instrument``, whose
    ``sitecustomize`` counts the Redis requests (round trips) and commands the
    worker's redis-py client sends and writes the counts to ``counts_path``.
    """

    def __init__(
        self,
        services: Services,
        out_dir: Path,
        name: str,
        *,
        topic_prefix: str,
        group: str,
        redis_prefix: str,
        manual_clock: bool = False,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.services = services
        self.name = name
        self.topic_prefix = topic_prefix
        self.group = group
        self.redis_prefix = redis_prefix
        self.manual_clock = manual_clock
        self.extra_env = extra_env or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.work_dir = out_dir / "workers" / name
        self.log_path = self.work_dir / "worker.log"
        self.counts_path = self.work_dir / "redis-counts.json"
        self.proc: subprocess.Popen[bytes] | None = None
        self._http: aiohttp.ClientSession | None = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        path = env.get("PYTHONPATH")
        env.update(
            {
                "KAFKA_BOOTSTRAP": self.services.bootstrap,
                "REDIS_URL": self.services.redis_url,
                "TOPIC_PREFIX": self.topic_prefix,
                "CONSUMER_GROUP": self.group,
                "REDIS_PREFIX": self.redis_prefix,
                "HTTP_HOST": "127.0.0.1",
                "HTTP_PORT": str(self.port),
                "CLOCK": "manual" if self.manual_clock else "system",
                "ADMIN_TOKEN": ADMIN_TOKEN,
                "API_TOKENS": "{}",
                "LOG_LEVEL": "DEBUG",
                "PYTHONPATH": str(INSTRUMENT_DIR) + (f":{path}" if path else ""),
                "BENCH_REDIS_COUNTS": str(self.counts_path),
            }
        )
        env.update(self.extra_env)
        return env

    def spawn(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker"],
                cwd=self.work_dir,
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(
                f"worker {self.name} exited; log tail:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def log_bytes(self, start: int = 0) -> bytes:
        if not self.log_path.exists():
            return b""
        with self.log_path.open("rb") as f:
            f.seek(start)
            return f.read()

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def redis_counts(self) -> dict[str, Any]:
        """The latest counts the instrumented worker wrote (every 0.1 s)."""
        for _ in range(5):
            try:
                data: dict[str, Any] = orjson.loads(self.counts_path.read_bytes())
                return data
            except (OSError, orjson.JSONDecodeError):
                time.sleep(0.02)
        return {"requests": 0, "commands": 0, "by_command": {}, "mget_keys": 0}

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        return proc_rss_bytes(self.pid)

    async def start(self, wait_seconds: float = 90) -> None:
        self.spawn()
        await self.wait_ready(wait_seconds)

    async def wait_ready(self, wait_seconds: float = 90) -> None:
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                status, _ = await self.request("GET", "/readyz")
                if status == 200:
                    return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"worker {self.name} not ready:\n{self.log_tail()}")

    async def request(
        self, method: str, path: str, body: Any = None, limit_s: float = 900
    ) -> tuple[int, Any]:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with self._http.request(
            method,
            self.url + path,
            data=None if body is None else orjson.dumps(body),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=limit_s),
        ) as resp:
            content = await resp.read()
            try:
                return resp.status, orjson.loads(content)
            except orjson.JSONDecodeError:
                return resp.status, content.decode(errors="replace")

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        """A request that must succeed (2xx); returns the JSON body."""
        status, data = await self.request(method, path, body)
        if status >= 300:
            raise RuntimeError(f"{method} {path} -> {status}: {data}")
        return data

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait)


def batch_lines(data: bytes) -> list[tuple[float, int, float]]:
    """(logged at, records, ms) of every "Batch of N records in X ms" line."""
    return [
        (log_time(m.group(1)), int(m.group(2)), float(m.group(3)))
        for m in BATCH_LINE.finditer(data)
    ]


def sweep_lines(data: bytes) -> list[tuple[int, int, float]]:
    return [
        (int(m.group(1)), int(m.group(2)), float(m.group(3)))
        for m in SWEEP_LINE.finditer(data)
    ]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


#: Width of the windows ``latency_figures`` gives a p99 for.
LATENCY_WINDOW_S = 5.0


def latency_figures(
    samples: list[tuple[float, float]], warmup_s: float
) -> dict[str, Any]:
    """Latency percentiles of ``(sent_ms, latency_ms)`` samples.

    ``p50_ms``/``p99_ms``/``max_ms`` are over the events sent ``warmup_s`` or
    more after the first one (the steady state: a cold worker's first second
    is a one-off that would otherwise set the p99 of a 40 s run);
    ``all_*`` are over every event, and ``p99_by_window_ms`` gives the p99
    of each ``LATENCY_WINDOW_S`` window of send time, so the start can be
    seen beside the rest.
    """
    if not samples:
        raise ValueError("no latency samples")
    start = min(sent for sent, _ in samples)
    every = [latency for _, latency in samples]
    steady = [lat for sent, lat in samples if sent - start >= warmup_s * 1000]
    if not steady:
        raise ValueError(f"no event was sent after the {warmup_s:g} s warm-up")
    windows: dict[int, list[float]] = {}
    for sent, latency in samples:
        windows.setdefault(int((sent - start) / 1000 // LATENCY_WINDOW_S), []).append(
            latency
        )
    return {
        "warmup_s": warmup_s,
        "p50_ms": percentile(steady, 50),
        "p99_ms": percentile(steady, 99),
        "max_ms": max(steady),
        "steady_samples": len(steady),
        "all_p50_ms": percentile(every, 50),
        "all_p99_ms": percentile(every, 99),
        "all_max_ms": max(every),
        "p99_by_window_ms": [percentile(windows[w], 99) for w in sorted(windows)],
    }
