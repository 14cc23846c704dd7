"""The pipeline measurements of ``benchmarks/run.py``, one function each.

Every function takes the run's ``Context`` and returns the figures of one
repetition (the clock boundary: one dict per boundary); ``run.py`` takes the
medians. Each one uses its own Redis
prefix and consumer group (and, where it publishes, its own topic prefix), and
removes its Redis keys when done.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from bench_data import (
    CLOCK_TENANT,
    EVAL_RULE,
    SEGMENTS,
    SPAWN,
    TENANTS,
    SteadySpec,
    Tenant,
    clock_events,
    eval_spec,
    input_topic_names,
    publish_steady,
    rfc,
)
from bench_lib import (
    ASSIGNED_LINE,
    BATCH_LINE,
    GroupWatch,
    Services,
    TopicCollector,
    WorkerProc,
    batch_lines,
    busy_fraction,
    census_delta,
    cpu_census,
    create_topics,
    end_offsets,
    latency_figures,
    log,
    machine_busy,
    read_range,
    redis_snapshot,
    sweep_lines,
    unlink_prefix,
)
from bench_profile import Sampler, sampled, summarize
from redis.asyncio import Redis

from signals.keys import WAKE_SHARDS, Keys
from streams.demo import record_key, topic_for
from streams.kafka import DEADLETTER_TOPIC, MEMBERSHIP_TOPIC

ROOT = Path(__file__).resolve().parent.parent
DAY_US = 86400 * 1_000_000

#: Round trips per batch by reading the code (``streams/engine.py``,
#: ``signals/store.py``): load, write, and when any membership changed, one
#: to index members, clear outboxes and move wake-ups; the manual clock adds
#: one.
ROUND_TRIPS_PER_BATCH = 3


@dataclass
class Context:
    services: Services
    out: Path
    run: str
    events: int
    contacts: int
    partitions: int
    data_prefix: str
    ends: dict[TopicPartition, int] = field(default_factory=dict)
    setup_prefix: str = ""

    @property
    def redis_url(self) -> str:
        return self.services.redis_url


# -- segments through the HTTP API ----------------------------------------------


async def create_segments(
    worker: WorkerProc, tenants: tuple[Tenant, ...], extra_limit: int = 0
) -> None:
    for tenant in tenants:
        body: dict[str, Any] = {"timezone": tenant.timezone}
        if extra_limit:
            body["segment_limit"] = len(SEGMENTS) + extra_limit
        await worker.call("PUT", f"/v1/tenants/{tenant.id}", body)
        for spec in SEGMENTS:
            await worker.call("POST", f"/v1/tenants/{tenant.id}/segments", spec)


async def setup_namespace(ctx: Context, redis_prefix: str) -> None:
    """Tenants and segments of a namespace, created over the HTTP API of a
    worker that shares the Redis prefix but consumes its own (empty) topics,
    so that the measured worker starts consuming with every segment in place.
    """
    worker = WorkerProc(
        ctx.services,
        ctx.out,
        f"setup-{redis_prefix}",
        topic_prefix=ctx.setup_prefix,
        group=f"{ctx.run}-setup",
        redis_prefix=redis_prefix,
    )
    try:
        await worker.start()
        await create_segments(worker, TENANTS, extra_limit=2)
    finally:
        await worker.stop()


# -- throughput (one or more workers draining the pre-filled topics) --------------


async def _snapshot(
    workers: list[WorkerProc], redis: Redis, watch: GroupWatch, ctx: Context
) -> dict[str, Any]:
    return {
        "at": time.time(),
        "cpu": [w.cpu_seconds() for w in workers],
        "counts": [w.redis_counts() for w in workers],
        "redis": await redis_snapshot(redis),
        "committed": await watch.committed_total(ctx.ends),
        "busy": machine_busy(),
        "census": cpu_census(),
    }


def _all_assigned(workers: list[WorkerProc]) -> bool:
    """Every worker's latest partition assignment is non-empty."""
    for w in workers:
        found = ASSIGNED_LINE.findall(w.log_bytes())
        if not found or found[-1].strip() == b"none":
            return False
    return True


async def _topic_ends(ctx: Context, topic: str) -> dict[TopicPartition, int]:
    """End offsets of ``topic``; empty if it does not exist (yet)."""
    try:
        return await asyncio.wait_for(end_offsets(ctx.services.bootstrap, [topic]), 5)
    except TimeoutError:
        return {}


def membership_summary(records: list[tuple[int, bytes]]) -> dict[str, Any]:
    """Records, distinct ``event_id``s (a repeat is a re-publication of the same
    change: delivery is at least once), and records per reason."""
    ids: set[str] = set()
    reasons: dict[str, int] = {}
    for _, value in records:
        record = orjson.loads(value)
        ids.add(record["event_id"])
        reasons[record["reason"]] = reasons.get(record["reason"], 0) + 1
    return {
        "records": len(records),
        "distinct": len(ids),
        "repeated": len(records) - len(ids),
        "by_reason": reasons,
    }


async def _profile_sample(redis: Redis, prefix: str) -> dict[str, Any]:
    sizes: list[int] = []
    lengths: list[int] = []
    async for key in redis.scan_iter(match=f"{prefix}:c:*", count=1000):
        lengths.append(int(await redis.strlen(key)))
        sizes.append(int(await redis.memory_usage(key) or 0))
        if len(sizes) >= 300:
            break
    contacts = 0
    for tenant in TENANTS:
        contacts += int(await redis.scard(Keys(prefix).tenant_contacts(tenant.id)))
    return {
        "contacts_stored": contacts,
        "profile_value_bytes_median": statistics.median(lengths) if lengths else 0,
        "profile_key_memory_median": statistics.median(sizes) if sizes else 0,
    }


async def drain_run(
    ctx: Context,
    label: str,
    n_workers: int,
    evaluate: int | None = None,
    profile_dir: Path | None = None,
) -> dict[str, Any]:
    """Drain every pre-published event with ``n_workers`` fresh workers.

    With ``profile_dir`` (one worker), py-spy samples the worker from its
    first batch to the end of the drain, and through each evaluation walk;
    the summaries go to ``result["profile"]`` (see ``bench_profile``).

    Events/s: total events over the time from the start of the first batch
    (its "Batch of N records in X ms" DEBUG line, minus X) to the moment the
    group's committed offsets reach the end offsets (polled every 0.1 s).
    Per-event figures: deltas from the first poll after the first batch
    appeared in the log to the end, over the events committed in between.
    """
    prefix = f"{ctx.run}{label}"
    group = f"{ctx.run}-{label}"
    await setup_namespace(ctx, prefix)
    redis = Redis.from_url(ctx.redis_url)
    membership_topic = ctx.data_prefix + MEMBERSHIP_TOPIC
    deadletter_topic = ctx.data_prefix + DEADLETTER_TOPIC
    membership_before = await _topic_ends(ctx, membership_topic)
    deadletters_before = sum((await _topic_ends(ctx, deadletter_topic)).values())
    workers = [
        WorkerProc(
            ctx.services,
            ctx.out,
            f"{label}-w{i}",
            topic_prefix=ctx.data_prefix,
            group=group,
            redis_prefix=prefix,
        )
        for i in range(n_workers)
    ]
    watch = GroupWatch(ctx.services.bootstrap, group)
    await watch.start()
    total = sum(ctx.ends.values())
    result: dict[str, Any] = {"workers": n_workers, "events": total}
    profiles: dict[str, Any] = {}
    sampler: Sampler | None = None
    try:
        for w in workers:
            w.spawn()
        start: dict[str, Any] | None = None
        steady: tuple[float, int] | None = None
        last_progress = (time.monotonic(), 0)
        spawned = time.monotonic()
        while True:
            for w in workers:
                w.check_alive()
            if start is None:
                if any(BATCH_LINE.search(w.log_bytes()) for w in workers):
                    start = await _snapshot(workers, redis, watch, ctx)
                    if profile_dir is not None:
                        sampler = Sampler(workers[0].pid, profile_dir / "drain.folded")
                        sampler.start()
                elif time.monotonic() - spawned > 180:
                    raise TimeoutError("no batch within 180 s of starting")
            else:
                done = await watch.committed_total(ctx.ends)
                if done >= total:
                    t_end = time.time()
                    break
                if steady is None and n_workers > 1 and _all_assigned(workers):
                    steady = (time.time(), done)
                if done > last_progress[1]:
                    last_progress = (time.monotonic(), done)
                elif time.monotonic() - last_progress[0] > 120:
                    raise TimeoutError(f"stuck at {done} of {total} committed")
            await asyncio.sleep(0.1)
        end = await _snapshot(workers, redis, watch, ctx)
        rss = [w.rss_bytes() for w in workers]
        if sampler is not None:
            folded = await sampler.stop()
            if folded is not None:
                profiles["drain"] = summarize(folded.read_text(), "Ingest.run")

        lines = [batch_lines(w.log_bytes()) for w in workers]
        every = [x for per in lines for x in per]
        t_first = min(at - ms / 1000 for at, _, ms in every)
        seconds = t_end - t_first
        window = max(1, total - start["committed"])
        requests = sum(
            e["requests"] - s["requests"]
            for s, e in zip(start["counts"], end["counts"], strict=True)
        )
        commands = sum(
            e["commands"] - s["commands"]
            for s, e in zip(start["counts"], end["counts"], strict=True)
        )
        mget_keys = sum(
            e["mget_keys"] - s["mget_keys"]
            for s, e in zip(start["counts"], end["counts"], strict=True)
        )
        by_command: dict[str, int] = {}
        for s, e in zip(start["counts"], end["counts"], strict=True):
            for name, value in e["by_command"].items():
                by_command[name] = (
                    by_command.get(name, 0) + value - s["by_command"].get(name, 0)
                )
        server = start["redis"].delta(end["redis"])
        cpu = sum(e - s for s, e in zip(start["cpu"], end["cpu"], strict=True))
        membership = membership_summary(
            await read_range(
                ctx.services.bootstrap,
                membership_before,
                await _topic_ends(ctx, membership_topic),
            )
        )
        deadletters = (
            sum((await _topic_ends(ctx, deadletter_topic)).values())
            - deadletters_before
        )
        result.update(
            {
                "seconds": round(seconds, 3),
                "events_per_s": total / seconds,
                "window_events": window,
                "cpu_us_per_event": cpu * 1e6 / window,
                "round_trips_per_event": requests / window,
                "round_trips_per_event_without_sweep_polls": (
                    requests - by_command.get("ZRANGEBYSCORE", 0)
                )
                / window,
                "commands_per_event": commands / window,
                "mget_keys_per_event": mget_keys / window,
                "commands_by_name_per_event": {
                    k: round(v / window, 4) for k, v in sorted(by_command.items()) if v
                },
                "batches": len(every),
                "records_per_batch": sum(n for _, n, _ in every) / max(1, len(every)),
                "round_trips_per_event_from_log": len(every)
                * ROUND_TRIPS_PER_BATCH
                / total,
                "redis_server_calls_per_event": server["calls"] / window,
                "redis_server_cpu_us_per_event": server["cpu_seconds"] * 1e6 / window,
                "redis_server_calls_by_name_per_event": {
                    k: round(v / window, 4) for k, v in server["per_command"].items()
                },
                "membership_records_per_event": membership["records"] / total,
                "membership_repeated_records": membership["repeated"],
                "membership_by_reason": membership["by_reason"],
                "dead_letters": deadletters,
                "worker_rss_mib": [round(r / 2**20, 1) for r in rss],
                "per_worker_records": [sum(n for _, n, _ in per) for per in lines],
                "per_worker_cpu_s": [
                    round(e - s, 2)
                    for s, e in zip(start["cpu"], end["cpu"], strict=True)
                ],
                "machine_busy": busy_fraction(start["busy"], end["busy"]),
                "cpu_cores": census_delta(start["census"], end["census"]),
            }
        )
        if steady is not None and t_end > steady[0]:
            result["steady_events"] = total - steady[1]
            result["steady_events_per_s"] = (total - steady[1]) / (t_end - steady[0])
        result.update(await _profile_sample(redis, prefix))
        if evaluate is not None:
            try:
                result["evaluation"] = await evaluation(
                    workers[0], evaluate, profile_dir, profiles
                )
            except Exception as exc:
                log(f"!! evaluation failed: {exc!r}")
                result["evaluation_error"] = repr(exc)
        if profiles:
            result["profile"] = profiles
        return result
    finally:
        if sampler is not None:
            await sampler.stop()
        await watch.close()
        for w in workers:
            await w.stop()
        await unlink_prefix(redis, f"{prefix}:")
        await redis.aclose()


# -- evaluation over all contacts -------------------------------------------------


async def evaluation(
    worker: WorkerProc,
    repeat: int,
    profile_dir: Path | None = None,
    profiles: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Preview, backfill and snapshot over every contact of the three tenants.

    Preview: client wall time of ``POST .../segments/preview``. Backfill and
    snapshot: the ``seconds`` the create response reports (the walk), with the
    client wall time beside it. contacts/s = contacts walked / seconds, summed
    over the tenants. With ``profile_dir``, each kind of walk is sampled with
    py-spy and summarised into ``profiles``.
    """

    def sampling(phase: str) -> contextlib.AbstractAsyncContextManager[None]:
        if profile_dir is None or profiles is None:
            return contextlib.nullcontext()
        return sampled(worker.pid, profile_dir / f"{phase}.folded", profiles, phase)

    out: dict[str, Any] = {}
    contacts = 0
    preview_s = 0.0
    async with sampling("preview"):
        for tenant in TENANTS:
            started = time.perf_counter()
            body = await worker.call(
                "POST",
                f"/v1/tenants/{tenant.id}/segments/preview",
                {"rule": EVAL_RULE, "limit": 10},
            )
            preview_s += time.perf_counter() - started
            contacts += int(body["contacts"])
    out["contacts"] = contacts
    out["preview_contacts_per_s"] = contacts / preview_s
    for kind, key in (("active", "backfill"), ("static", "snapshot")):
        walked = 0
        server_s = wall_s = 0.0
        members = 0
        async with sampling(key):
            for tenant in TENANTS:
                started = time.perf_counter()
                body = await worker.call(
                    "POST",
                    f"/v1/tenants/{tenant.id}/segments",
                    eval_spec(kind, repeat),
                )
                wall_s += time.perf_counter() - started
                report = body[key]
                walked += int(report["contacts"])
                server_s += float(report["seconds"])
                members += int(report["entered"])
        out[f"{key}_contacts_per_s"] = walked / server_s if server_s else 0.0
        out[f"{key}_contacts_per_s_wall"] = walked / wall_s
        out[f"{key}_members"] = members
    return out


# -- latency at a steady rate ---------------------------------------------------------


async def latency(
    ctx: Context, repeat: int, rate: float, duration: float, warmup: float
) -> dict[str, Any]:
    """Events at a steady ``rate`` to a fresh namespace with one worker running.

    The events come from a process of their own (``publish_steady``), each
    sent with an explicit Kafka timestamp (the send time, ms);
    a membership record with reason ``event`` is matched to the event named by
    its ``caused_by``, and its latency is its own Kafka timestamp (set by the
    worker's producer) minus that one.
    """
    label = f"l{repeat}"
    prefix = f"{ctx.run}{label}"
    topic_prefix = f"{ctx.run}.{label}."
    worker = WorkerProc(
        ctx.services,
        ctx.out,
        f"latency-{repeat}",
        topic_prefix=topic_prefix,
        group=f"{ctx.run}-{label}",
        redis_prefix=prefix,
    )
    redis = Redis.from_url(ctx.redis_url)
    collector = TopicCollector(ctx.services.bootstrap, topic_prefix + MEMBERSHIP_TOPIC)
    count = max(1, int(rate * duration))
    try:
        await worker.start()
        await create_segments(worker, TENANTS)
        await collector.start()
        await asyncio.sleep(1.0)
        cpu0 = worker.cpu_seconds()
        census0 = cpu_census()
        spec = SteadySpec(ctx.services.bootstrap, topic_prefix, prefix, count, rate)
        with ProcessPoolExecutor(1, mp_context=SPAWN) as pool:
            steady = await asyncio.get_running_loop().run_in_executor(
                pool, publish_steady, spec
            )
        sent = steady.sent
        publish_s = steady.seconds
        cpu1 = worker.cpu_seconds()
        census1 = cpu_census()
        ends = await end_offsets(
            ctx.services.bootstrap, input_topic_names(topic_prefix)
        )
        watch = GroupWatch(ctx.services.bootstrap, worker.group)
        await watch.start()
        try:
            deadline = time.monotonic() + 300
            while await watch.committed_total(ends) < sum(ends.values()):
                worker.check_alive()
                if time.monotonic() > deadline:
                    raise TimeoutError("latency run did not drain")
                await asyncio.sleep(0.2)
        finally:
            await watch.close()
        await _settle_reader(collector)
        # A subscriber deduplicates by event_id: the first delivery counts.
        first: dict[str, tuple[int, str | None, str]] = {}
        for ts, value in collector.records:
            record = orjson.loads(value)
            seen = first.get(record["event_id"])
            if seen is None or ts < seen[0]:
                first[record["event_id"]] = (ts, record["caused_by"], record["reason"])
        changes = len(collector.records)
        samples = [
            (float(sent[cause]), float(ts - sent[cause]))
            for ts, cause, reason in first.values()
            if reason == "event" and cause in sent
        ]
        if not samples:
            raise RuntimeError("no membership record matched an event")
        return {
            "rate_target": rate,
            "rate_achieved": count / publish_s,
            "events": count,
            "membership_records": changes,
            "membership_repeated_records": changes - len(first),
            "matched": len(samples),
            "matched_share_of_events": len(samples) / count,
            **latency_figures(samples, warmup),
            "generator_max_stall_ms": steady.max_stall * 1000,
            "worker_cpu_share": (cpu1 - cpu0) / publish_s,
            "cpu_cores": census_delta(census0, census1),
        }
    finally:
        await collector.stop()
        await worker.stop()
        await unlink_prefix(redis, f"{prefix}:")
        await redis.aclose()


async def latency_floor(
    ctx: Context, repeat: int, rate: float, duration: float, warmup: float
) -> dict[str, Any]:
    """What Kafka and the load generator alone take: the latency figure's floor.

    The same steady stream as ``latency`` (same process, same rate) to fresh
    topics, read by a bare aiokafka consumer in this process, no worker
    running: an event's latency here is the time it was handed to this
    process minus its Kafka timestamp; the same warm-up is left out.
    """
    topic_prefix = f"{ctx.run}.f{repeat}."
    topics = input_topic_names(topic_prefix)
    await create_topics(ctx.services.bootstrap, topics, ctx.partitions)
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=ctx.services.bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    count = max(1, int(rate * duration))
    samples: list[tuple[float, float]] = []
    done = asyncio.Event()

    async def read() -> None:
        while len(samples) < count:
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            now_ms = time.time() * 1000
            for records in batch.values():
                samples.extend(
                    (float(r.timestamp), now_ms - r.timestamp) for r in records
                )
        done.set()

    await consumer.start()
    reader = asyncio.create_task(read())
    try:
        spec = SteadySpec(
            ctx.services.bootstrap, topic_prefix, topic_prefix, count, rate
        )
        with ProcessPoolExecutor(1, mp_context=SPAWN) as pool:
            steady = await asyncio.get_running_loop().run_in_executor(
                pool, publish_steady, spec
            )
        await asyncio.wait_for(done.wait(), 120)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await consumer.stop()
    return {
        "rate_achieved": count / steady.seconds,
        "events": count,
        **latency_figures(samples, warmup),
        "generator_max_stall_ms": steady.max_stall * 1000,
    }


async def _settle_reader(collector: TopicCollector, quiet: float = 1.5) -> None:
    """Wait until the reader is at the end and nothing new came for ``quiet`` s."""
    deadline = time.monotonic() + 120
    seen, since = len(collector.records), time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        if len(collector.records) != seen:
            seen, since = len(collector.records), time.monotonic()
        elif time.monotonic() - since >= quiet and await collector.caught_up():
            return
    raise TimeoutError("membership reader did not settle")


# -- the clock boundary -------------------------------------------------------------


def _boundary_us(tz: str) -> int:
    """Local midnight of the 10th of next month (days 10-15 stay in one month)."""
    now = datetime.now(ZoneInfo(tz))
    month = now.month % 12 + 1
    year = now.year + (now.month == 12)
    local = datetime(year, month, 10, tzinfo=ZoneInfo(tz))
    return int(local.astimezone(UTC).timestamp()) * 1_000_000


async def _due_wakeups(redis: Redis, keys: Keys, instant_us: int) -> int:
    pipe = redis.pipeline(transaction=False)
    for shard in range(WAKE_SHARDS):
        pipe.zcount(keys.wakeups(shard), "-inf", instant_us)
    return int(sum(await pipe.execute()))


async def _outboxes(redis: Redis, prefix: str) -> int:
    found = 0
    async for _ in redis.scan_iter(match=f"{prefix}:o:*", count=10_000):
        found += 1
    return found


async def _publish(bootstrap: str, prefix: str, events: list[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=512 * 1024
    )
    await producer.start()
    try:
        pending = []
        for event in events:
            pending.append(
                await producer.send(
                    topic_for(event, prefix), orjson.dumps(event), key=record_key(event)
                )
            )
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def clock_boundary(ctx: Context, boundaries: int) -> list[dict[str, Any]]:
    """``boundaries`` consecutive local midnights, each changing ~10 % of contacts.

    The worker runs with ``CLOCK=manual``. After the histories are applied,
    the clock is moved just past each boundary in turn (``POST
    /v1/admin/clock``). Seconds: from just before that request to the Kafka
    timestamp of the last membership record with reason ``clock`` it caused.
    Touched: the wake-ups due at the new instant, counted in Redis just before
    the move (every one is a contact the sweep reads and writes), and the
    sum of "contacts due" of the worker's "Clock sweep" log lines after it.
    """
    label = "c"
    prefix = f"{ctx.run}{label}"
    topic_prefix = f"{ctx.run}.{label}."
    tz = CLOCK_TENANT.timezone
    boundary = _boundary_us(tz)
    worker = WorkerProc(
        ctx.services,
        ctx.out,
        "clock",
        topic_prefix=topic_prefix,
        group=f"{ctx.run}-{label}",
        redis_prefix=prefix,
        manual_clock=True,
    )
    redis = Redis.from_url(ctx.redis_url)
    keys = Keys(prefix)
    collector = TopicCollector(
        ctx.services.bootstrap, topic_prefix + MEMBERSHIP_TOPIC, from_end=True
    )
    results: list[dict[str, Any]] = []
    try:
        await worker.start()
        await worker.call(
            "POST", "/v1/admin/clock", {"now": rfc(boundary - 2 * 3600 * 1_000_000)}
        )
        await create_segments(worker, (CLOCK_TENANT,))
        events, changers = clock_events(
            f"{ctx.run}{label}", ctx.contacts, boundary, boundaries
        )
        log(f"clock boundary: applying {len(events):,} events of history")
        await _publish(ctx.services.bootstrap, topic_prefix, events)
        ends = await end_offsets(
            ctx.services.bootstrap, input_topic_names(topic_prefix)
        )
        watch = GroupWatch(ctx.services.bootstrap, worker.group)
        await watch.start()
        try:
            deadline = time.monotonic() + 1800
            while await watch.committed_total(ends) < sum(ends.values()):
                worker.check_alive()
                if time.monotonic() > deadline:
                    raise TimeoutError("clock history did not drain")
                await asyncio.sleep(0.5)
        finally:
            await watch.close()
        clock_now = boundary - 2 * 3600 * 1_000_000
        while await _due_wakeups(redis, keys, clock_now) or await _outboxes(
            redis, prefix
        ):
            worker.check_alive()
            await asyncio.sleep(0.5)
        await collector.start()
        for r in range(boundaries):
            instant = boundary + r * DAY_US + 1_000_000
            due = await _due_wakeups(redis, keys, instant)
            log_at = worker.log_size()
            first_record = len(collector.records)
            t0 = time.time()
            await worker.call("POST", "/v1/admin/clock", {"now": rfc(instant)})
            deadline = time.monotonic() + 600
            while await _due_wakeups(redis, keys, instant) or await _outboxes(
                redis, prefix
            ):
                worker.check_alive()
                if time.monotonic() > deadline:
                    raise TimeoutError("clock sweep did not finish")
                await asyncio.sleep(0.2)
            await _settle_reader(collector)
            records = [
                (ts, orjson.loads(v)) for ts, v in collector.records[first_record:]
            ]
            clock_records = [(ts, v) for ts, v in records if v["reason"] == "clock"]
            sweeps = sweep_lines(worker.log_bytes(log_at))
            last = max((ts for ts, _ in clock_records), default=0)
            results.append(
                {
                    "boundary": rfc(instant - 1_000_000),
                    "contacts": ctx.contacts,
                    "expected_changers": changers[r],
                    "seconds": (last / 1000 - t0) if clock_records else 0.0,
                    "changes": len(clock_records),
                    "repeated_records": len(clock_records)
                    - len({v["event_id"] for _, v in clock_records}),
                    "changed_contacts": len(
                        {v["contact_id"] for _, v in clock_records}
                    ),
                    "touched_due_wakeups": due,
                    "touched_from_log": sum(n for n, _, _ in sweeps),
                    "sweep_seconds_from_log": round(sum(s for _, _, s in sweeps), 3),
                    "other_records": len(records) - len(clock_records),
                }
            )
            log(
                f"clock boundary {r + 1}: {len(clock_records)} changes, "
                f"{results[-1]['seconds']:.2f} s"
            )
        return results
    finally:
        await collector.stop()
        await worker.stop()
        await unlink_prefix(redis, f"{prefix}:")
        await redis.aclose()


# -- memory per contact after 90 days ------------------------------------------------


async def memory_per_contact(redis_url: str, contacts: int) -> dict[str, Any]:
    """Runs benchmarks/memory_per_contact.py and parses its figures."""
    env = dict(os.environ)
    env["REDIS_URL"] = redis_url
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "benchmarks" / "memory_per_contact.py"),
        "--contacts",
        str(contacts),
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await proc.communicate()
    text = out.decode()
    if proc.returncode != 0:
        raise RuntimeError(f"memory_per_contact.py failed: {err.decode()[-2000:]}")

    def grab(pattern: str) -> float:
        match = re.search(pattern, text)
        if not match:
            raise RuntimeError(f"no {pattern!r} in memory_per_contact output:\n{text}")
        return float(match.group(1).replace(",", ""))

    return {
        "contacts": contacts,
        "events_per_contact": grab(r"\(([\d.]+) per contact\)"),
        "profile_key_bytes_median": grab(r"MEMORY USAGE: median (\d+) B"),
        "shared_bytes_per_contact": grab(r"member sets: (\d+) B per contact"),
        "bytes_per_contact": grab(r"total per contact \(keys\): (\d+) B"),
        "used_memory_growth_per_contact": grab(
            r"used_memory growth per contact: (-?\d+)"
        ),
        "output": text.strip(),
    }
