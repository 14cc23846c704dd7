"""The benchmark of issue 5: every measurement in one run, one report.

    eval "$(python3 scripts/services.py env)"
    .venv/bin/python benchmarks/run.py                       # full: 1M events
    .venv/bin/python benchmarks/run.py --events 100000 --contacts 10000 --repeats 1
    .venv/bin/python benchmarks/run.py --render benchmarks/out/<timestamp>

Prepares its data (publishes ``--events`` events over ``--contacts`` contacts
of three tenants to fresh topics, see ``bench_data.py``), then, ``--repeats``
times each: the baselines on those topics (raw aiokafka, a no-op faust agent,
the Redis server's own rate), the drain by one worker (throughput and costs
per event, then preview/backfill/snapshot over its contacts), the drain by two
workers; then the latency at half the measured rate, the clock boundary and
Redis memory per contact after 90 days. Figures are medians over the repeats,
each set beside its baselines of the same run. The report, Markdown and JSON,
goes to ``benchmarks/out/<timestamp>/`` (with every worker's log); its path is
printed last. Topics and Redis keys of the run are deleted at the end.

Kafka and Redis come from ``$KAFKA_BOOTSTRAP`` and ``$REDIS_URL``;
``--redis private`` starts a redis-server of our own for the run instead, so
that the server-wide figures (commandstats, CPU, used_memory) see no other
client.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import baselines
import bench_measure as measure
import bench_profile
import orjson
from bench_data import TENANTS, input_topic_names, publish_stream
from bench_lib import (
    PrivateRedis,
    Services,
    census_delta,
    cpu_census,
    create_topics,
    delete_topics_with_prefix,
    end_offsets,
    loadavg,
    log,
    machine_info,
    redis_snapshot,
    unlink_prefix,
)
from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
STEPS = (
    "baselines",
    "redis",
    "throughput",
    "scaling",
    "latency",
    "clock",
    "memory",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--partitions", type=int, default=4, help="partitions per input topic"
    )
    parser.add_argument(
        "--publishers",
        type=int,
        default=max(2, os.cpu_count() or 2),
        help="publishing processes, one producer each",
    )
    parser.add_argument("--latency-seconds", type=float, default=40.0)
    parser.add_argument(
        "--latency-warmup",
        type=float,
        default=5.0,
        help="seconds at the start of each latency stream left out of its "
        "percentiles (the whole run's are reported beside them)",
    )
    parser.add_argument(
        "--latency-rate",
        type=float,
        default=0.0,
        help="events/s for the latency figure (default: half the measured max)",
    )
    parser.add_argument(
        "--memory-contacts",
        type=int,
        default=0,
        help="contacts for memory_per_contact.py (default: min(3000, --contacts))",
    )
    parser.add_argument("--redis", choices=("shared", "private"), default="shared")
    parser.add_argument(
        "--no-profile",
        action="store_true",
        help="do not sample the last one-worker drain and its walks with py-spy",
    )
    parser.add_argument(
        "--skip", default="", help=f"comma-separated steps to skip: {','.join(STEPS)}"
    )
    args = parser.parse_args(argv)
    if args.events < args.contacts:
        parser.error("--events must be at least --contacts (one update per contact)")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    unknown = set(filter(None, args.skip.split(","))) - set(STEPS)
    if unknown:
        parser.error(f"unknown steps to skip: {', '.join(sorted(unknown))}")
    return args


# -- bookkeeping --------------------------------------------------------------------


def median_of(runs: list[Any]) -> Any:
    """Field-wise median of a list of result dicts (numbers only)."""
    runs = [r for r in runs if r is not None]
    if not runs:
        return None
    first = runs[0]
    if isinstance(first, dict):
        out: dict[str, Any] = {}
        for key in first:
            values = [r.get(key) for r in runs if isinstance(r, dict)]
            merged = median_of(values)
            if merged is not None:
                out[key] = merged
        return out
    if isinstance(first, bool):
        return None
    if isinstance(first, int | float):
        numbers = [float(r) for r in runs if isinstance(r, int | float)]
        return statistics.median(numbers) if numbers else None
    return None


def pick(run: Any, path: str) -> float | None:
    value = run
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return float(value) if isinstance(value, int | float) else None


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def _reader() -> str:
    """Which reader of stored profiles the workers use: they inherit this
    process's environment and interpreter (``signals.profile.NATIVE``)."""
    from signals import profile

    if profile.NATIVE is not None:
        native = importlib.metadata.version("profilestream-native")
        return f"compiled (profilestream-native {native})"
    if os.environ.get("PROFILESTREAM_NATIVE") == "0":
        return "Python (PROFILESTREAM_NATIVE=0)"
    return "Python (profilestream-native not installed)"


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        self.out = OUT / self.stamp
        self.run = f"pb{uuid.uuid4().hex[:6]}"
        self.skip = set(filter(None, args.skip.split(",")))
        self.results: dict[str, Any] = {
            "raw": [],
            "faust": [],
            "throughput": [],
            "scaling": [],
            "redis_rates": [],
            "latency": [],
            "latency_floor": [],
            "clock": [],
            "memory": [],
            "profiled": [],
        }
        self.errors: dict[str, str] = {}
        self.contention: dict[str, dict[str, float]] = {}
        self.meta: dict[str, Any] = {}
        self.private: PrivateRedis | None = None

    async def guard(self, name: str, step: Callable[[], Awaitable[Any]]) -> Any:
        log(f"-- {name}")
        before = cpu_census()
        try:
            return await step()
        except Exception as exc:
            log(f"!! {name} failed: {exc!r}")
            self.errors[name] = "".join(traceback.format_exception(exc))[-3000:]
            return None
        finally:
            self.contention[name] = census_delta(before, cpu_census())

    # -- the run ---------------------------------------------------------------------

    async def main(self) -> Path:
        args = self.args
        self.out.mkdir(parents=True, exist_ok=True)
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
        redis_url = os.environ.get("REDIS_URL")
        if not bootstrap or not redis_url:
            raise SystemExit(
                'KAFKA_BOOTSTRAP and REDIS_URL must be set: eval "$(python3 '
                'scripts/services.py env)"'
            )
        if args.redis == "private":
            self.private = PrivateRedis(self.out)
            await self.private.start()
            redis_url = self.private.url
        services = Services(bootstrap, redis_url)
        data_prefix = f"{self.run}.data."
        ctx = measure.Context(
            services=services,
            out=self.out,
            run=self.run,
            events=args.events,
            contacts=args.contacts,
            partitions=args.partitions,
            data_prefix=data_prefix,
            setup_prefix=f"{self.run}.setup.",
        )
        self.meta = await self.describe(services)
        log(f"run {self.run}, output {self.out}")
        started = time.monotonic()
        try:
            self.meta["background"] = await self.background(services)
            await self.guard("publish", lambda: self.publish(ctx))
            if ctx.ends:
                await self.repeats(ctx)
                await self.profiled(ctx)
            await self.after(ctx)
        finally:
            self.meta["seconds"] = round(time.monotonic() - started, 1)
            self.meta["loadavg_end"] = loadavg()
            await self.cleanup(services)
            if self.private is not None:
                self.private.stop()
            self.write()
        return self.out / "report.md"

    async def publish(self, ctx: measure.Context) -> None:
        args = self.args
        topics = input_topic_names(ctx.data_prefix)
        await create_topics(ctx.services.bootstrap, topics, args.partitions)
        log(
            f"publishing {args.events:,} events over {args.contacts:,} contacts "
            f"with {args.publishers} producers"
        )
        started = time.monotonic()
        sent = await asyncio.to_thread(
            publish_stream,
            ctx.services.bootstrap,
            ctx.data_prefix,
            self.run,
            args.events,
            args.contacts,
            time.time_ns() // 1000,
            args.publishers,
        )
        seconds = time.monotonic() - started
        ctx.ends = await end_offsets(ctx.services.bootstrap, topics)
        total = sum(ctx.ends.values())
        if total != sent:
            raise RuntimeError(f"sent {sent} events but the topics hold {total}")
        per_topic: dict[str, int] = {}
        for tp, end in ctx.ends.items():
            per_topic[tp.topic.removeprefix(ctx.data_prefix)] = (
                per_topic.get(tp.topic.removeprefix(ctx.data_prefix), 0) + end
            )
        self.meta["data"] = {
            "events": total,
            "contacts": args.contacts,
            "tenants": [
                {"id": t.id, "timezone": t.timezone, "share": t.share} for t in TENANTS
            ],
            "partitions": args.partitions,
            "per_topic": per_topic,
            "publish_seconds": round(seconds, 1),
            "publish_events_per_s": round(total / seconds),
        }
        log(f"published {total:,} events in {seconds:.1f} s")

    async def repeats(self, ctx: measure.Context) -> None:
        args = self.args
        topics = input_topic_names(ctx.data_prefix)
        total = sum(ctx.ends.values())
        timeout = max(600.0, total / 500)
        for r in range(args.repeats):
            log(f"== repeat {r + 1} of {args.repeats}")
            raw = faust = tp = scaling = rates = None
            if "baselines" not in self.skip:
                raw = await self.guard(
                    f"raw aiokafka {r}",
                    lambda r=r: baselines.run_raw(  # type: ignore[misc]
                        ctx.services.bootstrap,
                        topics,
                        f"{self.run}-raw{r}",
                        total,
                        timeout,
                    ),
                )
                faust = await self.guard(
                    f"no-op faust agent {r}",
                    lambda r=r: baselines.run_faust(  # type: ignore[misc]
                        ctx.services.bootstrap,
                        topics,
                        f"{self.run}-noop{r}",
                        total,
                        self.out / "faust" / str(r),
                        timeout,
                    ),
                )
            if "throughput" not in self.skip:
                tp = await self.guard(
                    f"throughput {r}",
                    lambda r=r: measure.drain_run(ctx, f"t{r}", 1, evaluate=r),  # type: ignore[misc]
                )
            if "scaling" not in self.skip:
                scaling = await self.guard(
                    f"two workers {r}",
                    lambda r=r: measure.drain_run(ctx, f"s{r}", 2),  # type: ignore[misc]
                )
            if "redis" not in self.skip:
                body = int(tp["profile_value_bytes_median"]) if tp else 1500
                rates = await self.guard(
                    f"redis server rate {r}",
                    lambda r=r, body=body: baselines.redis_server_rates(  # type: ignore[misc]
                        ctx.redis_url, f"{self.run}rb{r}", body, 200_000
                    ),
                )
            if tp and "evaluation_error" in tp:
                self.errors[f"evaluation {r}"] = tp["evaluation_error"]
            self.results["raw"].append(raw)
            self.results["faust"].append(faust)
            self.results["throughput"].append(tp)
            self.results["scaling"].append(scaling)
            self.results["redis_rates"].append(rates)
            for name, value in (("raw", raw), ("faust", faust), ("pipeline", tp)):
                if value:
                    log(f"{name}: {value['events_per_s']:,.0f} events/s")

    async def profiled(self, ctx: measure.Context) -> None:
        """One more one-worker drain and its walks, sampled with py-spy.

        Not one of the repeats: sampling takes CPU from the machine the
        worker shares, so this run's figures stay out of every median.
        """
        if self.args.no_profile or "throughput" in self.skip:
            return
        if not bench_profile.available():
            log("py-spy not found: the report has no profile")
            return
        result = await self.guard(
            "profiled drain",
            lambda: measure.drain_run(
                ctx,
                "p",
                1,
                evaluate=self.args.repeats,
                profile_dir=self.out / "profile",
            ),
        )
        self.results["profiled"].append(result)

    async def after(self, ctx: measure.Context) -> None:
        args = self.args
        if "latency" not in self.skip:
            rate = args.latency_rate
            if not rate:
                measured = [r["events_per_s"] for r in self.results["throughput"] if r]
                rate = statistics.median(measured) / 2 if measured else 2000.0
            self.meta["latency_rate"] = rate
            self.meta["latency_warmup"] = args.latency_warmup
            for r in range(args.repeats):
                floor = await self.guard(
                    f"latency floor {r}",
                    lambda r=r: measure.latency_floor(  # type: ignore[misc]
                        ctx, r, rate, args.latency_seconds, args.latency_warmup
                    ),
                )
                self.results["latency_floor"].append(floor)
                if floor:
                    log(
                        f"Kafka and generator alone: p50 {floor['p50_ms']:.0f} ms, "
                        f"p99 {floor['p99_ms']:.0f} ms"
                    )
                result = await self.guard(
                    f"latency {r}",
                    lambda r=r: measure.latency(  # type: ignore[misc]
                        ctx, r, rate, args.latency_seconds, args.latency_warmup
                    ),
                )
                self.results["latency"].append(result)
                if result:
                    log(
                        f"latency p50 {result['p50_ms']:.0f} ms, "
                        f"p99 {result['p99_ms']:.0f} ms after the warm-up; whole "
                        f"run p99 {result['all_p99_ms']:.0f} ms, max "
                        f"{result['all_max_ms']:.0f} ms (the generator's "
                        f"longest pause {result['generator_max_stall_ms']:.0f} ms)"
                    )
        if "clock" not in self.skip:
            boundaries = min(args.repeats, 5)
            clock = await self.guard(
                "clock boundary", lambda: measure.clock_boundary(ctx, boundaries)
            )
            self.results["clock"] = clock or []
        if "memory" not in self.skip:
            contacts = args.memory_contacts or min(3000, args.contacts)
            for r in range(args.repeats):
                result = await self.guard(
                    f"memory per contact {r}",
                    lambda: measure.memory_per_contact(ctx.redis_url, contacts),
                )
                self.results["memory"].append(result)

    async def background(self, services: Services) -> dict[str, Any]:
        """Other clients' load on Redis during 3 idle seconds before the run."""
        redis = Redis.from_url(services.redis_url)
        try:
            before = await redis_snapshot(redis)
            await asyncio.sleep(3)
            delta = before.delta(await redis_snapshot(redis))
        finally:
            await redis.aclose()
        return {
            "redis_calls_per_s": delta["calls"] / delta["seconds"],
            "redis_cpu_share": delta["cpu_seconds"] / delta["seconds"],
        }

    async def cleanup(self, services: Services) -> None:
        try:
            names = await delete_topics_with_prefix(services.bootstrap, self.run)
            log(f"deleted {len(names)} topics")
        except Exception as exc:
            log(f"!! deleting topics failed: {exc!r}")
        redis = Redis.from_url(services.redis_url)
        try:
            removed = await unlink_prefix(redis, self.run)
            log(f"unlinked {removed} leftover Redis keys")
        except Exception as exc:
            log(f"!! deleting Redis keys failed: {exc!r}")
        finally:
            await redis.aclose()

    async def describe(self, services: Services) -> dict[str, Any]:
        def version(name: str) -> str:
            try:
                return importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                return "not installed"

        redis = Redis.from_url(services.redis_url)
        try:
            server = await redis.info("server")
            persistence = await redis.config_get("appendonly")
        finally:
            await redis.aclose()
        services_py = (ROOT / "scripts" / "services.py").read_text()
        kafka = re.search(r'KAFKA_VERSION: Final = "([^"]+)"', services_py)

        def git(*cmd: str) -> str:
            try:
                return subprocess.run(
                    ["git", *cmd], cwd=ROOT, capture_output=True, text=True, check=True
                ).stdout.strip()
            except (OSError, subprocess.CalledProcessError):
                return ""

        dirty = [
            line
            for line in git("status", "--porcelain").splitlines()
            if not line[3:].startswith("benchmarks/")
        ]
        return {
            "command": shlex.join([sys.executable, *sys.argv]),
            "started": datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": machine_info(),
            "versions": {
                "python": platform.python_version(),
                "profilestream": version("profilestream"),
                "faust-streaming": version("faust-streaming"),
                "aiokafka": version("aiokafka"),
                "redis-py": version("redis"),
                "hiredis": version("hiredis"),
                "orjson": version("orjson"),
                "zstandard": version("zstandard"),
                "redis-server": server.get("redis_version", "?"),
                "kafka": (kafka.group(1) if kafka else "?")
                + " (scripts/services.py's broker)",
            },
            "reader": _reader(),
            "git": {
                "commit": git("rev-parse", "--short", "HEAD"),
                "uncommitted_outside_benchmarks": len(dirty),
            },
            "services": {
                "kafka_bootstrap": services.bootstrap,
                "redis": self.args.redis,
                "redis_appendonly": persistence.get("appendonly", "?"),
            },
            "run_id": self.run,
        }

    # -- the report ---------------------------------------------------------------

    def write(self) -> None:
        medians = {k: median_of(v) for k, v in self.results.items()}
        targets = self.targets()
        document = {
            "meta": self.meta,
            "args": vars(self.args),
            "targets": targets,
            "medians": medians,
            "runs": self.results,
            "contention": self.contention,
            "errors": self.errors,
        }
        (self.out / "report.json").write_bytes(
            orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
        )
        (self.out / "report.md").write_text(render(self, targets))

    def series(self, key: str, path: str) -> list[float | None]:
        return [pick(r, path) for r in self.results.get(key, [])]

    def ratios(self, num: str, den_key: str) -> list[float | None]:
        out: list[float | None] = []
        for tp, base in zip(
            self.results["throughput"], self.results[den_key], strict=False
        ):
            a, b = pick(tp, num), pick(base, "events_per_s")
            out.append(a / b if a is not None and b else None)
        return out

    def ceilings(self) -> list[float | None]:
        """Events/s one Redis core could serve for the pipeline's mix, per
        repeat: from the server's own CPU per event during the drain (the
        worker's scripts write up to 500 contacts per call, so pricing calls
        at redis-benchmark's one-contact script rate would not fit)."""
        out: list[float | None] = []
        for cpu in self.series("throughput", "redis_server_cpu_us_per_event"):
            out.append(1e6 / cpu if cpu else None)
        return out

    def targets(self) -> list[dict[str, Any]]:
        def med(values: list[float | None]) -> float | None:
            numbers = [v for v in values if v is not None]
            return statistics.median(numbers) if numbers else None

        def series(key: str, path: str) -> float | None:
            return med(self.series(key, path))

        clock = self.results["clock"]
        touched = [
            c["touched_due_wakeups"] / c["changed_contacts"]
            for c in clock
            if c.get("changed_contacts")
        ]
        others = series("throughput", "cpu_cores.others")
        busy = series("throughput", "machine_busy.busy")
        steal = series("throughput", "machine_busy.steal")
        rows = [
            (
                "Throughput, one worker (events/s)",
                series("throughput", "events_per_s"),
                ">=",
                20_000,
                f"during the drains the CPUs were {fmt(busy, 2)} busy and "
                f"{fmt(steal, 2)} stolen; other processes used {fmt(others, 2)} "
                "cores",
            ),
            (
                "Throughput / no-op faust agent, same run",
                med(self.ratios("events_per_s", "faust")),
                ">=",
                2,
                f"no-op agent {fmt(series('faust', 'events_per_s'))} events/s",
            ),
            (
                "Redis round trips per event",
                series("throughput", "round_trips_per_event"),
                "<=",
                0.05,
                "counted in the worker, clock-sweep polls included; without them "
                + fmt(
                    series("throughput", "round_trips_per_event_without_sweep_polls"),
                    4,
                ),
            ),
            (
                "Redis commands per event",
                series("throughput", "commands_per_event"),
                "<=",
                2,
                "sent by the worker (EVALSHA = 1); INFO commandstats, which also "
                "counts the commands run inside the scripts (and other clients of "
                "a shared server): "
                + fmt(series("throughput", "redis_server_calls_per_event"), 2),
            ),
            (
                "Latency p50 at half the max rate (ms)",
                series("latency", "p50_ms"),
                "<=",
                20,
                f"at {fmt(self.meta.get('latency_rate'))} events/s, after the "
                f"first {fmt(self.meta.get('latency_warmup'))} s; whole run: "
                f"{fmt(series('latency', 'all_p50_ms'))} ms; Kafka and the "
                f"generator alone: {fmt(series('latency_floor', 'p50_ms'))} ms",
            ),
            (
                "Latency p99 at half the max rate (ms)",
                series("latency", "p99_ms"),
                "<=",
                100,
                f"max {fmt(series('latency', 'max_ms'))} ms; whole run: p99 "
                f"{fmt(series('latency', 'all_p99_ms'))}, max "
                f"{fmt(series('latency', 'all_max_ms'))} ms; Kafka and the "
                f"generator alone: {fmt(series('latency_floor', 'p99_ms'))} ms",
            ),
            (
                "Redis bytes per contact after 90 days",
                series("memory", "bytes_per_contact"),
                "<=",
                1024,
                "profile key MEMORY USAGE median "
                + fmt(series("memory", "profile_key_bytes_median"))
                + " B + shared keys",
            ),
            (
                "Preview (contacts/s)",
                series("throughput", "evaluation.preview_contacts_per_s"),
                ">=",
                50_000,
                f"over {fmt(series('throughput', 'evaluation.contacts'))} contacts",
            ),
            (
                "Backfill of an active segment (contacts/s)",
                series("throughput", "evaluation.backfill_contacts_per_s"),
                ">=",
                50_000,
                "",
            ),
            (
                "Static snapshot (contacts/s)",
                series("throughput", "evaluation.snapshot_contacts_per_s"),
                ">=",
                50_000,
                "",
            ),
            (
                "Clock boundary: clock move to last change published (s)",
                med([c["seconds"] for c in clock]),
                "<=",
                5,
                "changes per boundary "
                + fmt(med([c["changed_contacts"] for c in clock])),
            ),
            (
                "Clock boundary: contacts touched / contacts changed",
                med(list(touched)),
                "<=",
                2,
                "",
            ),
        ]
        out = []
        for name, value, op, limit, note in rows:
            met = None
            if value is not None:
                met = value >= limit if op == ">=" else value <= limit
            out.append(
                {
                    "target": name,
                    "value": value,
                    "op": op,
                    "limit": limit,
                    "met": met,
                    "note": note,
                }
            )
        return out


# -- Markdown -------------------------------------------------------------------------


def render(bench: Bench, targets: list[dict[str, Any]]) -> str:
    meta = bench.meta
    res = bench.results
    lines: list[str] = []
    add = lines.append
    machine = meta.get("machine", {})
    add(f"# profilestream benchmark {bench.stamp}")
    add("")
    add(f"Command: `{meta.get('command', '')}`  ")
    add(
        f"Started {meta.get('started', '?')}, took {meta.get('seconds', '?')} s; "
        f"run id `{meta.get('run_id', '')}`."
    )
    add("")
    add(
        f"Machine: {machine.get('nproc')} CPUs ({machine.get('cpu_model')}), "
        f"{machine.get('memory_gib')} GiB, Linux {machine.get('kernel')}; load "
        f"average {' '.join(machine.get('loadavg_start', []))} at the start, "
        f"{' '.join(meta.get('loadavg_end', []))} at the end. Kafka, Redis, the "
        "workers and this script share the machine."
    )
    versions = meta.get("versions", {})
    add("Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".")
    git = meta.get("git", {})
    add(
        f"Code: commit {git.get('commit')}, with "
        f"{git.get('uncommitted_outside_benchmarks')} uncommitted paths outside "
        "benchmarks/ in the work tree at the time."
    )
    if "reader" in meta:
        add(f"Reader of stored profiles, in every worker: {meta['reader']}.")
    svc = meta.get("services", {})
    background = meta.get("background", {})
    add(
        f"Redis: {svc.get('redis')} server (appendonly {svc.get('redis_appendonly')}); "
        f"before the run other clients sent it "
        f"{fmt(background.get('redis_calls_per_s'))} commands/s. "
        f"Kafka at {svc.get('kafka_bootstrap')}."
    )
    data = meta.get("data")
    if data:
        add(
            f"Data: {data['events']:,} events over {data['contacts']:,} contacts of "
            f"{len(data['tenants'])} tenants "
            f"({', '.join(t['id'] + ' ' + t['timezone'] for t in data['tenants'])}), "
            f"10 active segments each, {data['partitions']} partitions per input "
            f"topic; published in {data['publish_seconds']} s "
            f"({data['publish_events_per_s']:,} events/s). Per topic: "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(data["per_topic"].items()))
            + "."
        )
    add("")
    add(f"Every figure is the median of {bench.args.repeats} run(s); runs in brackets.")
    add("")
    add("## Targets of issue 5")
    add("")
    add("| target | measured | required | met | note |")
    add("| --- | --- | --- | --- | --- |")
    for t in targets:
        value = t["value"]
        if value is None or abs(value) >= 100:
            digits = 0
        else:
            digits = 4 if abs(value) < 0.1 else 2
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        add(
            f"| {t['target']} | {fmt(value, digits)} | {t['op']} {t['limit']:,} "
            f"| {met} | {t['note']} |"
        )
    add("")

    def row(label: str, values: list[float | None], digits: int = 0) -> None:
        numbers = [v for v in values if v is not None]
        median = statistics.median(numbers) if numbers else None
        runs = ", ".join(fmt(v, digits) for v in values)
        add(f"| {label} | {fmt(median, digits)} | {runs} |")

    def table(title: str) -> None:
        add(f"## {title}")
        add("")
        add("| figure | median | runs |")
        add("| --- | --- | --- |")

    table("Throughput and its baselines (same topics, same run)")
    row("pipeline, one worker: events/s", bench.series("throughput", "events_per_s"))
    row(
        "raw aiokafka getmany + orjson.loads: events/s",
        bench.series("raw", "events_per_s"),
    )
    row("no-op faust agent: events/s", bench.series("faust", "events_per_s"))
    row("pipeline / no-op faust agent", bench.ratios("events_per_s", "faust"), 2)
    row("pipeline / raw aiokafka", bench.ratios("events_per_s", "raw"), 2)
    row("Redis ceiling for the pipeline's mix (one core): events/s", bench.ceilings())
    row("pipeline, two workers: events/s", bench.series("scaling", "events_per_s"))
    row("two workers / one worker", _scale(bench), 2)
    add("")
    table("Costs per event (one worker)")
    row("worker CPU µs/event", bench.series("throughput", "cpu_us_per_event"), 1)
    row(
        "raw aiokafka consumer CPU µs/event", bench.series("raw", "cpu_us_per_event"), 1
    )
    row("no-op faust agent CPU µs/event", bench.series("faust", "cpu_us_per_event"), 1)
    row(
        "Redis round trips/event (counted in the worker)",
        bench.series("throughput", "round_trips_per_event"),
        4,
    )
    row(
        "  without the clock sweep's idle polls (ZRANGEBYSCORE)",
        bench.series("throughput", "round_trips_per_event_without_sweep_polls"),
        4,
    )
    row(
        f"Redis round trips/event (batches x {measure.ROUND_TRIPS_PER_BATCH}, log)",
        bench.series("throughput", "round_trips_per_event_from_log"),
        4,
    )
    row(
        "Redis commands/event sent by the worker (EVALSHA = 1)",
        bench.series("throughput", "commands_per_event"),
        3,
    )
    row(
        "Redis commandstats calls/event (server-wide, incl. inside scripts)",
        bench.series("throughput", "redis_server_calls_per_event"),
        3,
    )
    row(
        "Redis server CPU µs/event (server-wide)",
        bench.series("throughput", "redis_server_cpu_us_per_event"),
        1,
    )
    row("MGET keys/event", bench.series("throughput", "mget_keys_per_event"), 3)
    row("batches", bench.series("throughput", "batches"))
    row("records per batch", bench.series("throughput", "records_per_batch"))
    row(
        "membership records/event",
        bench.series("throughput", "membership_records_per_event"),
        3,
    )
    row(
        "  of which repeats of an event_id already published",
        bench.series("throughput", "membership_repeated_records"),
    )
    row("dead letters", bench.series("throughput", "dead_letters"))
    row(
        "machine CPUs busy during the drain (share of all CPU time)",
        bench.series("throughput", "machine_busy.busy"),
        2,
    )
    row(
        "  stolen by the hypervisor",
        bench.series("throughput", "machine_busy.steal"),
        2,
    )
    row(
        "  cores used by other processes (lower bound)",
        bench.series("throughput", "cpu_cores.others"),
        2,
    )
    add("")
    _breakdown(bench, add)
    table("Redis server's own rate (redis-benchmark, pipelined)")
    row("EVALSHA of the CAS script/s", bench.series("redis_rates", "evalsha_cas_per_s"))
    row("MGET keys/s (64-key MGETs)", bench.series("redis_rates", "mget_keys_per_s"))
    row("value bytes (median profile)", bench.series("redis_rates", "value_bytes"))
    add("")
    table(f"Latency at {fmt(meta.get('latency_rate'))} events/s")
    row(
        f"p50 ms (after the first {fmt(meta.get('latency_warmup'))} s)",
        bench.series("latency", "p50_ms"),
    )
    row("p99 ms (after the warm-up)", bench.series("latency", "p99_ms"))
    row("max ms (after the warm-up)", bench.series("latency", "max_ms"))
    row("whole run: p50 ms", bench.series("latency", "all_p50_ms"))
    row("whole run: p99 ms", bench.series("latency", "all_p99_ms"))
    row("whole run: max ms", bench.series("latency", "all_max_ms"))
    row("achieved rate events/s", bench.series("latency", "rate_achieved"))
    row("events", bench.series("latency", "events"))
    row("membership records", bench.series("latency", "membership_records"))
    row(
        "  repeats of an event_id (ignored: first delivery counts)",
        bench.series("latency", "membership_repeated_records"),
    )
    row("  matched to an event by caused_by", bench.series("latency", "matched"))
    row(
        "  matched / events sent",
        bench.series("latency", "matched_share_of_events"),
        2,
    )
    row(
        "worker CPU share (1.0 = one core)",
        bench.series("latency", "worker_cpu_share"),
        2,
    )
    row(
        "generator's longest pause ms",
        bench.series("latency", "generator_max_stall_ms"),
    )
    row(
        "floor: Kafka and generator alone, p50 ms",
        bench.series("latency_floor", "p50_ms"),
    )
    row("floor: p99 ms", bench.series("latency_floor", "p99_ms"))
    row("floor: max ms", bench.series("latency_floor", "max_ms"))
    add("")
    for i, run in enumerate(bench.results.get("latency") or []):
        if run and run.get("p99_by_window_ms"):
            windows = ", ".join(f"{v:.0f}" for v in run["p99_by_window_ms"])
            add(f"- latency run {i + 1}, p99 ms per 5 s of send time: {windows}")
    add("")
    table("Memory")
    row(
        "Redis bytes/contact after 90 days (profile + shared keys)",
        bench.series("memory", "bytes_per_contact"),
    )
    row(
        "  profile key MEMORY USAGE median",
        bench.series("memory", "profile_key_bytes_median"),
    )
    row("  shared keys per contact", bench.series("memory", "shared_bytes_per_contact"))
    row(
        "  used_memory growth per contact",
        bench.series("memory", "used_memory_growth_per_contact"),
    )
    row("  events per contact", bench.series("memory", "events_per_contact"), 1)
    row(
        "profile key MEMORY USAGE after the drain "
        f"({bench.args.events / bench.args.contacts:.0f} events per contact)",
        bench.series("throughput", "profile_key_memory_median"),
    )
    row(
        "worker RSS MiB at the end of the drain",
        [
            pick({"v": (r or {}).get("worker_rss_mib", [None])[0]}, "v")
            for r in res["throughput"]
        ],
        1,
    )
    add("")
    table("Evaluation over all contacts (after the drain)")
    row("contacts", bench.series("throughput", "evaluation.contacts"))
    row(
        "preview contacts/s",
        bench.series("throughput", "evaluation.preview_contacts_per_s"),
    )
    row(
        "backfill contacts/s",
        bench.series("throughput", "evaluation.backfill_contacts_per_s"),
    )
    row(
        "  (client wall time)",
        bench.series("throughput", "evaluation.backfill_contacts_per_s_wall"),
    )
    row(
        "snapshot contacts/s",
        bench.series("throughput", "evaluation.snapshot_contacts_per_s"),
    )
    row(
        "  (client wall time)",
        bench.series("throughput", "evaluation.snapshot_contacts_per_s_wall"),
    )
    add("")
    add("## Clock boundary")
    add("")
    if res["clock"]:
        add(
            "| boundary | contacts | changes | changed contacts | touched (due "
            "wake-ups) | touched (sweep log) | repeated records | seconds |"
        )
        add("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for c in res["clock"]:
            add(
                f"| {c['boundary']} | {c['contacts']:,} | {c['changes']:,} | "
                f"{c['changed_contacts']:,} | {c['touched_due_wakeups']:,} | "
                f"{c['touched_from_log']:,} | {c['repeated_records']:,} | "
                f"{c['seconds']:.2f} |"
            )
    else:
        add("Not measured.")
    add("")
    table("Two workers on the same topics")
    row(
        "events/s, first batch to all committed",
        bench.series("scaling", "events_per_s"),
    )
    row(
        "events/s once both hold partitions (after the join rebalance)",
        bench.series("scaling", "steady_events_per_s"),
    )
    row("  events in that window", bench.series("scaling", "steady_events"))
    for i in range(2):
        row(
            f"worker {i}: records",
            [
                pick({"v": (r or {}).get("per_worker_records", [None] * 2)[i]}, "v")
                for r in res["scaling"]
            ],
        )
        row(
            f"worker {i}: CPU s",
            [
                pick({"v": (r or {}).get("per_worker_cpu_s", [None] * 2)[i]}, "v")
                for r in res["scaling"]
            ],
            1,
        )
    add("")
    _profile(bench, add)
    add("## Contention: CPU cores used during each step")
    add("")
    add(
        "This benchmark and its children (workers, consumers), the Kafka and "
        "Redis servers (shared with whoever else uses them), every other process."
    )
    add("")
    add("| step | ours | Kafka + Redis | others |")
    add("| --- | --- | --- | --- |")
    for name, used in bench.contention.items():
        add(f"| {name} | {used['ours']} | {used['services']} | {used['others']} |")
    add("")
    add(METHOD)
    if bench.errors:
        add("## Errors")
        add("")
        for name, text in bench.errors.items():
            add(f"### {name}")
            add("")
            add("```")
            add(text.strip())
            add("```")
            add("")
    return "\n".join(lines) + "\n"


def _scale(bench: Bench) -> list[float | None]:
    out: list[float | None] = []
    for one, two in zip(
        bench.results["throughput"], bench.results["scaling"], strict=False
    ):
        a, b = pick(one, "events_per_s"), pick(two, "events_per_s")
        out.append(b / a if a and b is not None else None)
    return out


def _profile(bench: Bench, add: Callable[[str], None]) -> None:
    """Where the worker's time went, from the sampled (last) repeat."""
    runs = bench.results.get("profiled", []) + bench.results["throughput"]
    sampled = [r for r in runs if r and r.get("profile")]
    if not sampled:
        return
    run = sampled[0]
    phases = run["profile"]
    evaluation = run.get("evaluation", {})
    add("## Where the worker's time goes")
    add("")
    add(
        "py-spy samples (100/s, `--nonblocking`) of one worker through a drain "
        "of the same events and each evaluation walk after it, in a run of its "
        "own whose figures are in no median (sampling takes CPU from the "
        f"machine: it drained {fmt(run.get('events_per_s'))} events/s at "
        f"{fmt(run.get('cpu_us_per_event'), 1)} µs of CPU per event; preview "
        f"{fmt(evaluation.get('preview_contacts_per_s'))}, backfill "
        f"{fmt(evaluation.get('backfill_contacts_per_s'))}, snapshot "
        f"{fmt(evaluation.get('snapshot_contacts_per_s'))} contacts/s). Each "
        "sample counts for the deepest function on its stack that names a "
        "component (`benchmarks/bench_profile.py`), so each column adds up to "
        "100 % of the samples under the phase's root function. Folded stacks "
        "are kept beside the JSON (`profile/*.folded`)."
    )
    add("")
    names = list(phases)
    add("| component | " + " | ".join(names) + " |")
    add("| --- | " + " | ".join("---" for _ in names) + " |")
    components: list[str] = []
    for phase in phases.values():
        for component in phase["components"]:
            if component not in components:
                components.append(component)
    for component in components:
        cells = [
            f"{100 * phases[n]['components'][component]:.1f} %"
            if component in phases[n]["components"]
            else ""
            for n in names
        ]
        add(f"| {component} | " + " | ".join(cells) + " |")
    add(
        "| samples (root) | "
        + " | ".join(f"{phases[n]['samples']:,} ({phases[n]['root']})" for n in names)
        + " |"
    )
    add("")
    for name in names:
        top = phases[name]["top_inclusive"][:12]
        add(
            f"Largest inclusive shares, {name}: "
            + "; ".join(f"{label} {100 * share:.1f} %" for label, share in top)
            + "."
        )
        add("")


def _breakdown(bench: Bench, add: Callable[[str], None]) -> None:
    for key, title in (
        ("commands_by_name_per_event", "Commands the worker sent, per event"),
        (
            "redis_server_calls_by_name_per_event",
            "Redis commandstats calls per event (server-wide)",
        ),
    ):
        merged: dict[str, list[float]] = {}
        for run in bench.results["throughput"]:
            for name, value in ((run or {}).get(key) or {}).items():
                merged.setdefault(name, []).append(float(value))
        if not merged:
            continue
        parts = [
            f"{name} {statistics.median(v):.3f}"
            for name, v in sorted(merged.items(), key=lambda kv: -max(kv[1]))
        ]
        add(f"{title} (median): " + ", ".join(parts) + ".")
        add("")


METHOD = """## How each figure is measured

- **Data.** `bench_data.py` publishes the stream once, with `--publishers`
  processes of one aiokafka producer each (linger 50 ms, 512 KiB batches, no
  compression), to fresh topics; every measurement of a repeat reads those same
  topics with its own consumer group.
- **Segments.** Each drain uses a fresh Redis prefix. Its tenants (time zones)
  and ten active segments are created through the HTTP API of a *setup* worker
  that shares the Redis prefix but consumes its own empty topics, after the
  events were published and before the measured worker starts, so the measured
  worker consumes with every segment in place and never sees a backfill.
- **Workers** are `python -m streams.cli worker` subprocesses with the
  environment of `tests/harness.py` (own `TOPIC_PREFIX`, `CONSUMER_GROUP`,
  `REDIS_PREFIX`, `HTTP_PORT`, `LOG_LEVEL=DEBUG`), except `CLOCK=system` for
  every figure but the clock boundary (the manual clock costs one more Redis
  round trip per batch and is a test feature), and `PYTHONPATH` adding
  `benchmarks/instrument/`, whose `sitecustomize` counts the requests and
  commands the worker's redis-py client sends (one counter increment each).
- **Events/s** (pipeline): all events / (time the group's committed offsets
  reached the end offsets, polled every 0.1 s - start of the first batch,
  from the worker's DEBUG line "Batch of N records in X ms" minus X).
  Baselines: first non-empty poll to the last expected record, inside the
  consumer process; the faust agent is a true no-op (raw bytes, no decoding),
  the raw aiokafka loop decodes JSON and does not commit.
- **Per-event costs** are deltas from the first 0.1 s poll after the first batch
  appeared to the end, over the events committed in between: worker CPU from
  `/proc/<pid>/stat` utime+stime; round trips = requests written to Redis
  (a pipeline or a single command, each awaited), commands = commands in them
  (an `EVALSHA` is one), both counted in the worker; beside them the
  server-wide `INFO commandstats` sum of calls (this counts the commands that
  scripts run inside Redis too, and any other client of a shared server) and
  `INFO cpu` used_cpu_sys+used_cpu_user. The log estimate is batches x 3
  (load, compare-and-set, index + clear outboxes + wake-ups, by reading
  `streams/engine.py` and `signals/store.py`).
- **Redis ceiling** = 1 / (Redis server CPU per event in the drain): the
  events/s one Redis core serves for exactly the pipeline's mix. The
  redis-benchmark rates (one-contact compare-and-set script calls, 64-key
  `MGET`s on profile-sized values) are listed beside it as the server's own
  rate for those commands.
- **Latency**: a fresh namespace with one worker running; events sent at a
  steady rate (half the median one-worker throughput unless `--latency-rate`)
  for `--latency-seconds`, each with an explicit Kafka timestamp = send time,
  over a pool of rate x seconds / 4 new contacts (first event a
  `contact.updated`). Latency = Kafka timestamp of each membership record with
  reason `event` - Kafka timestamp of the event named by its `caused_by` (the
  last event of that contact in its batch). Nearest-rank percentiles. The
  events come from a process of their own (one aiokafka producer, linger 1 ms,
  sending every 5 ms what is due, its garbage collector off), so that the
  measuring process never holds the stream back; its longest pause between
  two turns is reported. Before each repeat, the *floor*: the same generator
  at the same rate into fresh topics read by a bare aiokafka consumer, no
  worker running (latency = time the consumer got the record - its Kafka
  timestamp): what Kafka and the generator take on their own. Both leave
  the events sent in the first `--latency-warmup` seconds (5) out of their
  percentiles: a worker's first second on a fresh namespace (cold code paths,
  the producer's first batches, the backlog they leave) is a one-off that
  would otherwise set the p99 of a 40 s run. The whole run's p50, p99 and max
  are reported beside them, and the p99 of each 5 s of send time.
- **Memory**: `benchmarks/memory_per_contact.py` run as a subprocess (the
  worker's update path in-process over 90 simulated days, ~56 events per
  contact); bytes per contact = median profile key `MEMORY USAGE` + wake-ups,
  contact index and member sets per contact. Worker RSS: `/proc/<pid>/status`
  VmRSS after the drain.
- **Evaluation**: after each one-worker drain, over all its contacts:
  `POST .../segments/preview` per tenant (client wall time), then an active
  and a static segment created per tenant (the `seconds` of the response's
  `backfill` / `snapshot`; client wall time beside it).
- **Clock boundary**: one tenant (Asia/Kolkata) of `--contacts` contacts with
  the ten segments; for boundary r, 10 % of the contacts have their only click
  at noon 7 days before, 40 % clicked the day before the first boundary, the
  rest never; `CLOCK=manual`, the default 0.5 s `CLOCK_TICK_SECONDS`. Seconds:
  from just before `POST /v1/admin/clock` to the Kafka timestamp of the last
  record with reason `clock`. Touched: wake-ups due at the new instant,
  counted in Redis before the move, and the "contacts due" of the worker's
  "Clock sweep" INFO lines (logged only by sweeps that changed something).
- **Two workers**: same topics, fresh group and prefix, both started together;
  same events/s definition (first batch of either to all committed), so a
  rebalance while the second one joins counts against it.
"""


def rerender(directory: Path) -> Path:
    """Write a run's report again from its ``report.json`` (after a change to
    how figures are derived or shown; the measurements stay as they were)."""
    document = orjson.loads((directory / "report.json").read_bytes())
    bench = Bench(argparse.Namespace(**document["args"]))
    bench.out = directory
    bench.stamp = directory.name
    bench.meta = document["meta"]
    bench.results = document["runs"]
    for run in bench.results["throughput"]:
        if run and run.get("batches"):
            run["round_trips_per_event_from_log"] = (
                run["batches"] * measure.ROUND_TRIPS_PER_BATCH / bench.args.events
            )
    bench.contention = document["contention"]
    bench.errors = document["errors"]
    # Components are attributed again from the kept stacks, with today's rules.
    for run in bench.results.get("profiled", []):
        for phase in (run or {}).get("profile", {}):
            folded = directory / "profile" / f"{phase}.folded"
            if folded.exists():
                run["profile"][phase] = bench_profile.summarize(
                    folded.read_text(), bench_profile.ROOTS[phase]
                )
    bench.write()
    return directory / "report.md"


def main() -> None:
    if sys.argv[1:2] == ["--render"] and len(sys.argv) == 3:
        print(rerender(Path(sys.argv[2])))
        return
    args = parse_args()
    bench = Bench(args)
    report = asyncio.run(bench.main())
    print(report)


if __name__ == "__main__":
    main()
