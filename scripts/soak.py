"""Soak: sustained load with periodic worker kills, lag and memory watched.

Runs two real workers (one group) against $KAFKA_BOOTSTRAP and $REDIS_URL,
publishes valid events at a steady rate for ``--minutes``, kills one worker
with SIGKILL every ``--kill-every`` seconds and starts it again, and samples
every 5 s: the group's lag on the input topics, each worker's RSS and Redis
``used_memory``. The report says, per kill, how long the lag took to come back
below one second of traffic, and compares memory right after warm-up with the
end. A short deduplication horizon (``--dedup-minutes``) lets profiles reach
their steady size within the run; with the default 24 h they would keep
growing for a day.

    eval "$(python3 scripts/services.py up)"
    .venv/bin/python scripts/soak.py --minutes 20 --rate 1300
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streams.demo import record_key, topic_for
from streams.kafka import INPUT_TOPICS
from tests.harness import WorkerProcess


@dataclass
class Sample:
    at: float
    lag: int
    rss_mib: list[float]
    redis_bytes: int


@dataclass
class Report:
    samples: list[Sample] = field(default_factory=list)
    kills: list[tuple[float, float | None]] = field(default_factory=list)
    published: int = 0


def event(tenant: str, contact: int, rng: random.Random) -> dict[str, object]:
    kind = rng.choice(
        [
            "link.clicked",
            "message.inbound",
            "campaign.received",
            "message.read",
            "message.outbound",
        ]
    )
    data: dict[str, object] = {
        "link.clicked": {"url": "https://shop.example/p"},
        "message.inbound": {"message_id": "m"},
        "campaign.received": {"campaign_id": "c1", "message_id": "m"},
        "message.read": {"message_id": "m", "campaign_id": "c1"},
        "message.outbound": {"message_id": "m"},
    }[kind]
    return {
        "event_id": uuid.uuid4().hex,
        "tenant_id": tenant,
        "contact_id": f"c{contact}",
        "type": kind,
        "occurred_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "data": data,
    }


def rss_mib(worker: WorkerProcess) -> float:
    if worker.proc is None or worker.proc.poll() is not None:
        return 0.0
    for line in Path(f"/proc/{worker.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def lag(
    admin: AIOKafkaAdminClient,
    probe: AIOKafkaConsumer,
    group: str,
    partitions: list[TopicPartition],
) -> int:
    ends = await probe.end_offsets(partitions)
    committed = await admin.list_consumer_group_offsets(group)
    return sum(
        max(0, end - (committed[tp].offset if tp in committed else 0))
        for tp, end in ends.items()
    )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--rate", type=float, default=1300, help="events/s")
    parser.add_argument("--contacts", type=int, default=20_000)
    parser.add_argument("--kill-every", type=float, default=120)
    parser.add_argument("--warmup", type=float, default=240, help="seconds")
    parser.add_argument("--dedup-minutes", type=float, default=3)
    args = parser.parse_args()
    bootstrap, redis_url = os.environ["KAFKA_BOOTSTRAP"], os.environ["REDIS_URL"]
    namespace = f"soak{uuid.uuid4().hex[:6]}"
    env = {
        "CLOCK": "system",
        "LOG_LEVEL": "INFO",
        "KAFKA_SESSION_TIMEOUT_SECONDS": "6",
        "DEDUP_HORIZON_HOURS": str(args.dedup_minutes / 60),
    }
    workers = [
        WorkerProcess(bootstrap, redis_url, namespace=namespace, extra_env=env)
        for _ in range(2)
    ]
    for w in workers:
        await w.start()
    group, prefix = workers[0].group, workers[0].prefix
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await producer.start()
    await admin.start()
    await probe.start()
    topics = [prefix + t for t in INPUT_TOPICS]
    await probe._client.force_metadata_update()
    partitions = [
        TopicPartition(t, p)
        for t in topics
        for p in probe.partitions_for_topic(t) or ()
    ]
    report = Report()
    rng = random.Random(7)
    started = time.monotonic()
    deadline = started + args.minutes * 60

    async def publish() -> None:
        sent = 0
        while time.monotonic() < deadline:
            due = int((time.monotonic() - started) * args.rate) - sent
            for _ in range(max(0, due)):
                e = event("soak", rng.randrange(args.contacts), rng)
                await producer.send(
                    topic_for(e, prefix), orjson.dumps(e), key=record_key(e)
                )
                sent += 1
            report.published = sent
            await asyncio.sleep(0.05)

    async def kill_loop() -> None:
        victim = 0
        while time.monotonic() + args.kill_every < deadline:
            await asyncio.sleep(args.kill_every)
            w = workers[victim % 2]
            victim += 1
            assert w.proc is not None
            w.proc.kill()
            w.proc.wait()
            killed_at = time.monotonic() - started
            w.spawn()
            print(f"[{killed_at:7.1f}s] kill -9 and restart of a worker", flush=True)
            report.kills.append((killed_at, None))

    async def sample_loop() -> None:
        while time.monotonic() < deadline + 60:
            info = await workers[0].redis.info("memory")
            s = Sample(
                time.monotonic() - started,
                await lag(admin, probe, group, partitions),
                [rss_mib(w) for w in workers],
                int(info["used_memory"]),
            )
            report.samples.append(s)
            print(
                f"[{s.at:7.1f}s] lag {s.lag:6d}  rss {s.rss_mib[0]:.0f}/"
                f"{s.rss_mib[1]:.0f} MiB  redis {s.redis_bytes / 2**20:.1f} MiB",
                flush=True,
            )
            if time.monotonic() > deadline and s.lag == 0:
                return
            await asyncio.sleep(5)

    try:
        await asyncio.gather(publish(), kill_loop(), sample_loop())
    finally:
        await producer.stop()
        await probe.stop()
        await admin.close()
        for w in workers:
            await w.stop()
        async for key in workers[0].redis.scan_iter(f"{namespace}:*"):
            await workers[0].redis.unlink(key)

    # Recovery after each kill: from the kill to the first sample, after the
    # lag's peak in that interval, with the lag under one second of load.
    threshold = args.rate
    recoveries: list[float | None] = []
    bounds = [k for k, _ in report.kills] + [float("inf")]
    for i, (killed_at, _) in enumerate(report.kills):
        window = [s for s in report.samples if killed_at < s.at < bounds[i + 1]]
        if not window:
            recoveries.append(None)
            continue
        peak = max(range(len(window)), key=lambda j: window[j].lag)
        back = [s for s in window[peak:] if s.lag <= threshold]
        recoveries.append(back[0].at - killed_at if back else None)
    warm = [s for s in report.samples if s.at >= args.warmup]
    first, last = (
        (warm[0], warm[-1]) if warm else (report.samples[0], report.samples[-1])
    )
    print("\n== soak report")
    print(
        f"published {report.published} events at {args.rate:g}/s for "
        f"{args.minutes:g} min over {args.contacts} contacts; 2 workers"
    )
    print(
        f"kills: {len(report.kills)}; lag back under {threshold:g} records after: "
        + ", ".join("never" if r is None else f"{r:.0f}s" for r in recoveries)
    )
    lags = [s.lag for s in report.samples]
    print(
        f"lag: median {statistics.median(lags):.0f}, max {max(lags)}, "
        f"at the end {report.samples[-1].lag}"
    )
    print(
        f"after warm-up ({args.warmup:g}s) -> end: worker RSS "
        f"{first.rss_mib} -> {last.rss_mib} MiB; Redis used_memory "
        f"{first.redis_bytes / 2**20:.1f} -> {last.redis_bytes / 2**20:.1f} MiB"
    )
    ok = report.samples[-1].lag == 0 and all(r is not None for r in recoveries)
    print("result:", "OK" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
