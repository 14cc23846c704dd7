"""The operator tools ``profilestream generate``, ``tail`` and ``lag``.

The tools run as subprocesses (``python -m streams.cli``) against the session
worker, with the worker's own variables (``KAFKA_BOOTSTRAP``, ``TOPIC_PREFIX``,
``CONSUMER_GROUP``) in their environment and no Kafka flags, so the defaults are
exercised too. A few fast checks of the pure parts (generator, line format,
progress line) come first.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.events import EVENT_TYPES, parse_event
from signals.windows import rfc3339 as wire_time
from signals.windows import to_us
from streams.kafka import INPUT_TOPICS
from streams.tools import (
    EventGenerator,
    Progress,
    existing_partitions,
    format_change,
    rfc3339,
)
from tests.events import Events
from tests.harness import ROOT, WorkerProcess, unique

CLI_TIMEOUT = 30.0


# ---------------------------------------------------------------- pure parts


def test_generated_events_are_valid_and_cover_every_type() -> None:
    from datetime import UTC, datetime

    generator = EventGenerator(["acme", "globex"], 50, seed=1, spread_seconds=3600)
    now = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
    events = [generator.event(n, now) for n in range(3000)]
    for event in events:
        parse_event(orjson.dumps(event))  # raises on anything off-contract
    kinds = Counter(e["type"] for e in events)
    assert set(kinds) == EVENT_TYPES
    # The mix: business messages are the most common, calls the rarest.
    assert kinds["message.outbound"] > kinds["call"]
    assert len({e["event_id"] for e in events}) == len(events)
    assert {e["tenant_id"] for e in events} == {"acme", "globex"}
    assert all(e["occurred_at"] <= rfc3339(now) for e in events)
    # Same seed, same content (ids carry the run, which differs unless given).
    again = EventGenerator(["acme", "globex"], 50, seed=1, run=generator.run)
    assert [again.event(n, now)["type"] for n in range(50)] == [
        e["type"] for e in events[:50]
    ]


def test_a_change_is_one_readable_line() -> None:
    change = {
        "event_id": "x",
        "tenant_id": "acme",
        "segment_id": "seg_x",
        "segment_version": 3,
        "contact_id": "+14155550100",
        "change": "entered",
        "reason": "event",
        "at": "2026-12-03T09:00:00Z",
        "caused_by": "evt-123",
    }
    assert format_change(change) == (
        "2026-12-03T09:00:00Z  acme  seg_x v3  +14155550100  entered  (event evt-123)"
    )
    clock = dict(change, change="exited", reason="clock", caused_by=None)
    assert format_change(clock).endswith("  exited  (clock)")


def test_progress_redraws_one_line() -> None:
    ticks = iter([0.0, 0.0, 0.5, 2.0, 4.0])
    out = io.StringIO()
    progress = Progress(out, 100, interval=1.0, width=10, clock=lambda: next(ticks))
    progress.update(10)  # drawn (first)
    progress.update(20)  # not drawn: within the interval
    progress.update(50)  # drawn
    progress.finish(100)
    text = out.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n")
    assert "\r[#####-----] 50/100  50.0%  25 ev/s  eta 2s" in text
    assert "[##########] 100/100 100.0%" in text


# ---------------------------------------------------------------- helpers


def tool_env(worker: WorkerProcess, extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "KAFKA_BOOTSTRAP": worker.kafka_bootstrap,
            "TOPIC_PREFIX": worker.prefix,
            "CONSUMER_GROUP": worker.group,
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


async def spawn(
    worker: WorkerProcess, *args: str, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "streams.cli",
        *args,
        cwd=ROOT,
        env=tool_env(worker, env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(f"tool timed out; stderr:\n{err.decode()}") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def run_tool(
    worker: WorkerProcess, *args: str, env: dict[str, str] | None = None
) -> tuple[str, str]:
    code, out, err = await finish(await spawn(worker, *args, env=env))
    assert code == 0, f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    return out, err


async def read_until(stream: asyncio.StreamReader, marker: bytes) -> bytes:
    """Bytes from ``stream`` up to and including ``marker``."""
    seen = b""
    while marker not in seen:
        chunk = await asyncio.wait_for(stream.read(1), CLI_TIMEOUT)
        if not chunk:
            raise AssertionError(f"stream ended before {marker!r}: {seen.decode()}")
        seen += chunk
    return seen


async def input_records(worker: WorkerProcess, tenants: Sequence[str]) -> list[Any]:
    """Every record now on the worker's input topics keyed by one of ``tenants``."""
    keys = tuple(f"{t}:".encode() for t in tenants)
    existing = await existing_partitions(worker.kafka_bootstrap)
    partitions = [
        TopicPartition(worker.prefix + topic, p)
        for topic in INPUT_TOPICS
        for p in existing[worker.prefix + topic]
    ]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=worker.kafka_bootstrap, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        found = []
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                found += [r for r in records if r.key.startswith(keys)]
        return found
    finally:
        await consumer.stop()


# ---------------------------------------------------------------- generate


async def test_generate_publishes_exactly_count_valid_events_the_worker_applies(
    worker: WorkerProcess,
) -> None:
    prefix = unique("gen")
    tenants = [f"{prefix}-1", f"{prefix}-2"]
    now = await worker.now()
    letters_before = len(worker.dead_letters())

    _, err = await run_tool(
        worker,
        "generate",
        "--rate",
        "1000",
        "--count",
        "400",
        "--tenants",
        "2",
        "--contacts",
        "15",
        "--tenant-prefix",
        prefix,
        "--at",
        rfc3339(now),
        "--seed",
        "7",
    )
    assert "published 400 events" in err
    assert "\r[" in err and "400/400 100.0%" in err  # the progress line

    records = await input_records(worker, tenants)
    events = [orjson.loads(r.value) for r in records]
    assert len(records) == 400
    assert len({e["event_id"] for e in events}) == 400
    for record in records:
        parse_event(record.value)
        event = orjson.loads(record.value)
        assert record.key == f"{event['tenant_id']}:{event['contact_id']}".encode()
        assert record.topic.startswith(worker.prefix)
    assert {e["type"] for e in events} == EVENT_TYPES

    await worker.settle()
    letters = worker.dead_letters()[letters_before:]
    assert not [x for x in letters if x.key and x.key.startswith(prefix.encode())]
    # Every generated contact exists, with exactly its generated clicks and
    # campaign deliveries counted (every event occurred at the worker's "now").
    by_contact: dict[tuple[str, str], Counter[str]] = {}
    for e in events:
        by_contact.setdefault((e["tenant_id"], e["contact_id"]), Counter())[
            e["type"]
        ] += 1
    for (tenant, contact), kinds in by_contact.items():
        body = await worker.contact(tenant, contact)
        signals = body["signals"]
        assert signals["links_clicked_7d"] == kinds["link.clicked"], contact
        assert signals["campaigns_received_7d"] == kinds["campaign.received"]


async def test_generate_stops_cleanly_on_ctrl_c_and_reports_what_was_sent(
    worker: WorkerProcess,
) -> None:
    prefix = unique("int")
    now = await worker.now()
    proc = await spawn(
        worker,
        "generate",
        "--rate",
        "200",
        "--contacts",
        "5",
        "--tenant-prefix",
        prefix,
        "--at",
        rfc3339(now),
    )
    assert proc.stderr is not None
    head = await read_until(proc.stderr, b"\r")  # the first progress draw
    await asyncio.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    code, _, rest = await finish(proc)
    err = head.decode() + rest
    assert code == 0, err
    match = re.search(r"stopped by Ctrl-C after (\d+) events", err)
    assert match, err
    sent = int(match.group(1))
    assert sent > 0
    assert len(await input_records(worker, [f"{prefix}-1"])) == sent
    await worker.settle()


# ---------------------------------------------------------------- tail

LINE = re.compile(
    r"^(?P<at>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z)  (?P<tenant>\S+)  "
    r"(?P<segment>seg_\w+) v(?P<version>\d+)  (?P<contact>\S+)  "
    r"(?P<change>entered|exited)  \((?P<why>[^)]*)\)$"
)


async def test_tail_prints_membership_changes_one_per_line(
    worker: WorkerProcess, tenant: str, events: Events
) -> None:
    now = await worker.now()
    contacts = ["+14155550001", "+14155550002", "+14155550003"]
    await worker.publish([events.click(c, now) for c in contacts])
    await worker.settle()
    status, segment = await worker.request(
        "POST",
        f"/v1/tenants/{tenant}/segments",
        {
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
                            }
                        ]
                    }
                ]
            },
        },
    )
    assert status == 201, segment
    segment_id = segment["id"]
    await worker.settle()

    # Backfill: three "entered" changes, read from the beginning of the topic.
    out, _ = await run_tool(
        worker, "tail", "--from-beginning", "--tenant", tenant, "--max", "3"
    )
    lines = out.splitlines()
    assert len(lines) == 3, out
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), out
    assert {m["contact"] for m in parsed if m} == set(contacts)
    for m in parsed:
        assert m is not None
        assert (m["tenant"], m["segment"], m["version"]) == (tenant, segment_id, "1")
        assert (m["change"], m["why"]) == ("entered", "definition")

    # Live, from the end: a fourth contact clicks and enters, caused by its event.
    proc = await spawn(worker, "tail", "--tenant", tenant, "--max", "1")
    assert proc.stderr is not None
    ready = await read_until(proc.stderr, b"Ctrl-C to stop")
    assert b"from the end" in ready
    click = events.click("+14155550004", now)
    await worker.publish([click])
    code, out, err = await finish(proc)
    assert code == 0, err
    assert out == (
        f"{wire_time(to_us(now))}  {tenant}  {segment_id} v1  "
        f"+14155550004  entered  (event {click['event_id']})\n"
    ), out
    await worker.settle()


# ---------------------------------------------------------------- lag


async def test_lag_is_zero_once_the_worker_caught_up(worker: WorkerProcess) -> None:
    now, lagging = await worker.now(), Events(unique("lag"))
    await worker.publish([lagging.click("+1", now), lagging.click("+2", now)])
    await worker.settle()
    out, _ = await run_tool(worker, "lag", "--json")
    report = orjson.loads(out)
    assert report["group"] == worker.group
    assert report["total_lag"] == 0
    assert report["missing_topics"] == []
    topics = {p["topic"] for p in report["partitions"]}
    assert topics == {worker.prefix + t for t in INPUT_TOPICS}
    assert any(p["committed"] for p in report["partitions"])
    for p in report["partitions"]:
        assert p["lag"] == 0 and p["end"] >= p["start"]

    table, _ = await run_tool(worker, "lag")
    assert table.splitlines()[-1] == (
        f"total lag 0 for group {worker.group} "
        f"over {len(report['partitions'])} partitions"
    )


async def test_lag_of_a_group_that_never_committed_is_every_record(
    worker: WorkerProcess,
) -> None:
    await worker.settle()  # nothing arrives while the offsets are compared
    group = unique("nobody")
    out, _ = await run_tool(worker, "lag", "--json", "--group", group)
    report = orjson.loads(out)
    assert report["group"] == group
    assert all(p["committed"] is None for p in report["partitions"])

    consumer = AIOKafkaConsumer(bootstrap_servers=worker.kafka_bootstrap)
    await consumer.start()
    try:
        partitions = [
            TopicPartition(p["topic"], p["partition"]) for p in report["partitions"]
        ]
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    expected = sum(ends[tp] - starts[tp] for tp in partitions)
    assert expected > 0
    assert report["total_lag"] == expected


async def test_tools_connect_with_the_worker_sasl_settings(
    worker: WorkerProcess,
) -> None:
    sasl_bootstrap = os.environ.get("KAFKA_SASL_BOOTSTRAP")
    if not sasl_bootstrap:
        pytest.skip("no SASL listener: KAFKA_SASL_BOOTSTRAP is not set")
    sys.path.insert(0, str(ROOT / "scripts"))
    from services import KAFKA_SASL_PASSWORD, KAFKA_SASL_USER

    await worker.settle()
    sasl = {
        "KAFKA_BOOTSTRAP": sasl_bootstrap,
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_MECHANISM": "PLAIN",
        "KAFKA_SASL_USERNAME": KAFKA_SASL_USER,
        "KAFKA_SASL_PASSWORD": KAFKA_SASL_PASSWORD,
    }
    out, _ = await run_tool(worker, "lag", "--json", env=sasl)
    report = orjson.loads(out)
    assert report["total_lag"] == 0 and report["partitions"]
    # A wrong password is refused, not silently ignored.
    bad = await spawn(worker, "lag", env={**sasl, "KAFKA_SASL_PASSWORD": "wrong"})
    code, _, err = await finish(bad)
    assert code != 0, err
    assert "wrong" not in err
