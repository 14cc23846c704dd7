"""Baselines the pipeline is set beside, from the same run and the same topics.

* ``raw``: a plain aiokafka ``getmany`` loop in its own process and group,
  decoding every value with ``orjson.loads`` and nothing else, no commits.
* ``faust``: a faust app in its own process and group with one no-op agent
  (raw bytes, no decoding) over the same topics; faust acks and commits.
* ``redis_server_rates``: the Redis server's own rate for the commands the
  pipeline sends, measured with ``redis-benchmark`` (a C client, pipelined):
  ``EVALSHA`` of the worker's own compare-and-set script on profile-sized
  values, and ``MGET`` of 64 keys (32 profiles, 32 absent outbox keys, as the
  batch read). Without ``redis-benchmark``, a pipelined redis-py loop.

For the consumers, the time runs from the first non-empty poll to the moment
the expected number of records has been read, both taken inside the consumer
process; CPU time is the process's over the same span.

Run as a script, this module is the consumer process:
``python benchmarks/baselines.py raw|faust --bootstrap ... --topics a,b ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from bench_lib import redis_address, unlink_prefix
from redis.asyncio import Redis

from signals.store import _CAS  # the worker's own compare-and-set script

HERE = Path(__file__).resolve()


# -- consumer processes --------------------------------------------------------------


async def _raw(args: argparse.Namespace) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer
    from aiokafka.coordinator.assignors.range import RangePartitionAssignor

    consumer = AIOKafkaConsumer(
        *args.topics.split(","),
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=2000,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        partition_assignment_strategy=(RangePartitionAssignor,),
    )
    await consumer.start()
    count = 0
    first = cpu0 = 0.0
    loads = orjson.loads
    try:
        while count < args.expected:
            batch = await consumer.getmany(timeout_ms=200, max_records=2000)
            if not batch:
                continue
            if not count:
                first, cpu0 = time.time(), time.process_time()
            for records in batch.values():
                for record in records:
                    loads(record.value)
                count += len(records)
        last, cpu1 = time.time(), time.process_time()
    finally:
        await consumer.stop()
    return {"events": count, "first": first, "last": last, "cpu_seconds": cpu1 - cpu0}


def _faust(args: argparse.Namespace) -> None:
    import faust

    app = faust.App(
        args.group,
        broker=f"kafka://{args.bootstrap.split(',')[0]}",
        web_enabled=False,
        store="memory://",
        topic_replication_factor=1,
        topic_disable_leader=True,
        datadir=args.datadir,
    )
    topic = app.topic(
        *args.topics.split(","),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    state = {"count": 0, "first": 0.0, "cpu0": 0.0}
    expected = args.expected
    result = Path(args.result)

    def finish(out: dict[str, Any]) -> None:
        result.write_bytes(orjson.dumps(out))

    @app.agent(topic)
    async def drain(stream: Any) -> None:
        async for _value in stream:
            state["count"] += 1
            if state["count"] == 1:
                state["first"], state["cpu0"] = time.time(), time.process_time()
            if state["count"] == expected:
                out = {
                    "events": expected,
                    "first": state["first"],
                    "last": time.time(),
                    "cpu_seconds": time.process_time() - state["cpu0"],
                }
                finish(out)

    worker = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("raw", "faust"))
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topics", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--expected", type=int, required=True)
    parser.add_argument("--result", default="")
    parser.add_argument("--datadir", default="")
    args = parser.parse_args()
    if args.mode == "raw":
        sys.stdout.write(orjson.dumps(asyncio.run(_raw(args))).decode() + "\n")
    else:
        _faust(args)


# -- parent side -----------------------------------------------------------------------


def _rate(data: dict[str, Any]) -> dict[str, Any]:
    seconds = data["last"] - data["first"]
    return {
        "events": data["events"],
        "seconds": round(seconds, 3),
        "events_per_s": data["events"] / seconds if seconds > 0 else 0.0,
        "cpu_us_per_event": data["cpu_seconds"] * 1e6 / max(1, data["events"]),
    }


async def run_raw(
    bootstrap: str, topics: list[str], group: str, expected: int, limit_s: float
) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE),
        "raw",
        "--bootstrap",
        bootstrap,
        "--topics",
        ",".join(topics),
        "--group",
        group,
        "--expected",
        str(expected),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"raw consumer failed: {err.decode()[-2000:]}")
    return _rate(orjson.loads(out.splitlines()[-1]))


def _spawn_faust(
    bootstrap: str, topics: list[str], app_id: str, expected: int, work_dir: Path
) -> subprocess.Popen[bytes]:
    work_dir.mkdir(parents=True, exist_ok=True)
    result = work_dir / "result.json"
    result.unlink(missing_ok=True)
    with (work_dir / "faust.log").open("ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                str(HERE),
                "faust",
                "--bootstrap",
                bootstrap,
                "--topics",
                ",".join(topics),
                "--group",
                app_id,
                "--expected",
                str(expected),
                "--result",
                str(result),
                "--datadir",
                str(work_dir / "data"),
            ],
            cwd=work_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:]


async def run_faust(
    bootstrap: str,
    topics: list[str],
    app_id: str,
    expected: int,
    work_dir: Path,
    limit_s: float,
) -> dict[str, Any]:
    result = work_dir / "result.json"
    proc = _spawn_faust(bootstrap, topics, app_id, expected, work_dir)
    try:
        deadline = time.monotonic() + limit_s
        while not result.exists():
            if proc.poll() is not None:
                tail = _tail(work_dir / "faust.log")
                raise RuntimeError(f"faust agent exited: {tail}")
            if time.monotonic() > deadline:
                raise TimeoutError("faust agent did not drain the topics in time")
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.05)
        return _rate(orjson.loads(result.read_bytes()))
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)


# -- Redis server rate -------------------------------------------------------

KEYSPACE = 10_000
MGET_KEYS = 64


async def redis_server_rates(
    redis_url: str, prefix: str, body_bytes: int, requests: int
) -> dict[str, Any]:
    """Ops/s of the pipeline's two main commands, as the server can do them."""
    redis = Redis.from_url(redis_url)
    body = b"0|" + orjson.dumps({"pad": "x" * max(0, body_bytes - 12)})
    try:
        pipe = redis.pipeline(transaction=False)
        for i in range(KEYSPACE):
            pipe.set(f"{prefix}:c:{i:012d}", body)
            if len(pipe) >= 1000:
                await pipe.execute()
        await pipe.execute()
        sha = await redis.script_load(_CAS)
        cas = [
            "EVALSHA",
            sha,
            "2",
            f"{prefix}:c:__rand_int__",
            f"{prefix}:o:__rand_int__",
            "0",
            body.decode(),
            "",
        ]
        keys = [f"{prefix}:c:__rand_int__" for _ in range(MGET_KEYS // 2)]
        keys += [f"{prefix}:o:__rand_int__" for _ in range(MGET_KEYS // 2)]
        mget = ["MGET", *keys]
        tool = shutil.which("redis-benchmark")
        if tool:
            addr = redis_address(redis_url)
            cas_rate = await _redis_benchmark(tool, addr, cas, requests)
            mget_rate = await _redis_benchmark(tool, addr, mget, requests // 8)
            method = "redis-benchmark -c 4 -P 32 -r 10000"
        else:
            cas_rate = await _redis_py_rate(redis, cas, requests)
            mget_rate = await _redis_py_rate(redis, mget, requests // 8)
            method = "pipelined redis-py loop (redis-benchmark not installed)"
        return {
            "method": method,
            "value_bytes": len(body),
            "evalsha_cas_per_s": cas_rate,
            "mget_per_s": mget_rate,
            "mget_keys_per_s": mget_rate * MGET_KEYS,
        }
    finally:
        await unlink_prefix(redis, f"{prefix}:")
        await redis.aclose()


async def _redis_benchmark(
    tool: str, addr: dict[str, Any], command: list[str], requests: int
) -> float:
    argv = [tool, "-h", addr["host"], "-p", str(addr["port"])]
    argv += ["--dbnum", str(addr["db"])]
    if addr["password"]:
        argv += ["-a", addr["password"]]
    argv += ["-c", "4", "-P", "32", "-r", str(KEYSPACE), "-n", str(requests)]
    argv += ["--csv", *command]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await proc.communicate()
    lines = [x for x in out.decode().splitlines() if x.strip()]
    if proc.returncode != 0 or len(lines) < 2:
        raise RuntimeError(f"redis-benchmark failed: {err.decode()[-500:]}")
    return float(lines[-1].split('","')[1])


async def _redis_py_rate(redis: Redis, command: list[str], requests: int) -> float:
    import random

    def concrete() -> list[str]:
        return [
            a.replace("__rand_int__", f"{random.randrange(KEYSPACE):012d}")
            for a in command
        ]

    started = time.perf_counter()
    done = 0
    while done < requests:
        pipe = redis.pipeline(transaction=False)
        for _ in range(min(256, requests - done)):
            pipe.execute_command(*concrete())
        done += len(pipe)
        await pipe.execute()
    return done / (time.perf_counter() - started)


if __name__ == "__main__":
    main()
