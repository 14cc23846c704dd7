"""Drives the end-to-end demo (run it through ``scripts/demo``).

Starts a worker as a subprocess against $KAFKA_BOOTSTRAP and $REDIS_URL,
creates an active segment, publishes the sample stream of ``streams.demo``,
and prints what a user of the product sees: a contact's signals over the HTTP
API and the membership changes on the ``segments.membership`` topic.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer

from streams.demo import publish, sample_events

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "demo-admin-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _show(title: str, data: object) -> None:
    print(f"\n== {title}")
    print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def _spawn(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=log,
        )


async def main() -> int:
    bootstrap = os.environ["KAFKA_BOOTSTRAP"]
    run = uuid.uuid4().hex[:6]
    prefix = f"demo{run}."
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(
        os.environ,
        TOPIC_PREFIX=prefix,
        CONSUMER_GROUP=f"demo{run}",
        REDIS_PREFIX=f"demo{run}",
        HTTP_HOST="127.0.0.1",
        HTTP_PORT=str(port),
        ADMIN_TOKEN=TOKEN,
    )
    log_path = ROOT / ".worker-logs" / f"demo-{run}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"starting a worker (log: {log_path})")
    worker = _spawn(env, log_path)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        async with aiohttp.ClientSession(base_url=url, headers=headers) as http:
            deadline = time.monotonic() + 90
            while True:
                try:
                    async with http.get("/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if worker.poll() is not None or time.monotonic() > deadline:
                    print(log_path.read_text()[-3000:], file=sys.stderr)
                    return 1
                await asyncio.sleep(0.3)
            print("worker ready")

            segment = {
                "name": "Clicked this week",
                "kind": "active",
                "rule": {
                    "any": [
                        {
                            "all": [
                                {
                                    "field": "signal.links_clicked_7d",
                                    "op": "gte",
                                    "value": 1,
                                },
                                {
                                    "field": "attribute.city",
                                    "op": "is",
                                    "value": "Pune",
                                },
                            ]
                        }
                    ]
                },
            }
            async with http.put(
                "/v1/tenants/demo", data=orjson.dumps({"timezone": "Asia/Kolkata"})
            ) as r:
                r.raise_for_status()
            async with http.post(
                "/v1/tenants/demo/segments", data=orjson.dumps(segment)
            ) as resp:
                created = orjson.loads(await resp.read())
                resp.raise_for_status()
            _show("segment created", created)

            sent = await publish(sample_events("demo"), bootstrap, prefix)
            print(f"\npublished {sent} sample events")

            consumer = AIOKafkaConsumer(
                prefix + "segments.membership",
                bootstrap_servers=bootstrap,
                auto_offset_reset="earliest",
            )
            await consumer.start()
            changes = []
            try:
                deadline = time.monotonic() + 30
                while not changes and time.monotonic() < deadline:
                    batch = await consumer.getmany(timeout_ms=500)
                    changes += [
                        orjson.loads(r.value) for rs in batch.values() for r in rs
                    ]
            finally:
                await consumer.stop()
            await asyncio.sleep(1)
            async with http.get("/v1/tenants/demo/contacts/+14155550100") as resp:
                contact = orjson.loads(await resp.read())
            _show(
                "contact demo:+14155550100 (GET /v1/tenants/demo/contacts/...)", contact
            )
            _show("membership changes on segments.membership", changes)
            return 0 if changes and contact.get("segments") else 1
    finally:
        worker.terminate()
        worker.wait(30)


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
