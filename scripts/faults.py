#!/usr/bin/env python3
"""Fault-injection runs of profilestream against real workers, Kafka and Redis.

A seeded stream (``tests/faults/stream.py``: contacts in two tenants, every
event type, 5 % of the events published twice with the same ``event_id``,
poison records interleaved) goes through real ``profilestream worker``
processes while faults are injected; at the end every contact, every
membership record and every dead letter is checked against the independent
model of ``tests/reference.py`` (``tests/faults/checks.py``) and a report is
printed. Scenarios, chosen by flags (``--all`` takes every one):

``--kills N``          kill -9 a worker at random moments, N times, restarting it
                       (``--pace`` seconds between chunks keeps events flowing).
``--rebalance``        from one worker to two and three, a graceful leave
                       (SIGTERM), a kill -9, a hard leave, while events flow.
``--pause``            a worker SIGSTOPped past the session timeout mid-stream;
                       then one stopped mid-batch, its batch and newer events
                       applied by the other, and resumed: nothing stale lands.
``--services``         restart the Kafka broker and Redis under load (needs a
                       private pair: set ``PROFILESTREAM_SERVICES_DIR``).
``--poison``           poison records right after every crash; then poison
                       published while every worker is down, and a kill -9
                       the moment a poison record's dead letter is out.
``--replay``           stop the workers, reset the group to offset 0, run again:
                       nothing may move (the replay's own dead letters aside).
``--clock-crash N``    move the test clock past a local midnight and kill -9 the
                       workers at once, or with an outbox waiting for Kafka, or
                       half-way through the sweep; N times, checking each.

Poison records (bad JSON, unknown type or field, naive or future time, missing
field, bad tenant, tombstone) are interleaved in every run.

Usage::

    PROFILESTREAM_SERVICES_DIR=/tmp/faults-services .venv/bin/python \\
        scripts/faults.py --all --contacts 300 --chunks 30 --pace 3

Without ``--services`` the services of ``KAFKA_BOOTSTRAP``/``REDIS_URL`` (or
``scripts/services.py env``) are used, with a namespace of the run's own;
``FAULTS_VERBOSE=1`` prints the faults as they happen.

Exit status 0 only if there is no mismatch and no poison record was
dead-lettered more than once. ``tests/test_faults.py`` imports ``run`` and
``Options`` for the CI-sized runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import shlex
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import time as time_of_day
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.faults.checks import LIMIT, Findings, SegmentIds, verify  # noqa: E402
from tests.faults.cluster import Cluster, Node  # noqa: E402
from tests.faults.rules import RULES  # noqa: E402
from tests.faults.stream import Stream, Tenant, generate  # noqa: E402
from tests.harness import rfc  # noqa: E402

#: The test clock at the start of every run: 22:30 in Kolkata, 14:30 in
#: St. John's, so the clock steps of a run cross a local midnight.
START = datetime(2026, 6, 10, 17, 0, tzinfo=UTC)
TENANTS = (Tenant("acme", "Asia/Kolkata"), Tenant("globex", "America/St_Johns"))


#: What ``Options.plan`` may name: (fraction of the stream, action).
ACTIONS = (
    "kill",  # kill -9 a random running worker, restart it soon after
    "kill-hard",  # kill -9 one of several workers, not restarted (a hard leave)
    "join",  # one more worker (or a stopped one again), in the background
    "join-ready",  # the same, and wait until it is ready
    "leave",  # SIGTERM one of several workers (a graceful leave)
    "pause",  # SIGSTOP one of several workers for pause_seconds, then SIGCONT
    "kafka",  # restart the broker (private services only)
    "redis",  # restart Redis (private services only)
)
#: Starting from one worker: two, three, a graceful leave, a kill -9 and its
#: restart, three again, a hard leave (kill -9, no restart).
REBALANCE_PLAN = (
    (0.1, "join"),
    (0.2, "join"),
    (0.35, "leave"),
    (0.5, "kill"),
    (0.65, "join"),
    (0.9, "kill-hard"),
)
#: Input topics have 4 partitions: a fourth worker would get none of some.
MAX_WORKERS = 3


@dataclass
class Options:
    seed: int = 4
    contacts: int = 200
    events_per_contact: int = 8
    duplicate_rate: float = 0.05
    poison_rate: float = 0.02
    chunks: int = 24
    #: Seconds between two chunks of the stream (on average).
    pace: float = 0.3
    workers: int = 1
    #: Faults while the stream flows; the flags below add to it.
    plan: tuple[tuple[float, str], ...] = ()
    kills: int = 0
    rebalance: bool = False
    pause_seconds: float = 0.0
    services: bool = False
    poison_after_crash: int = 0
    #: After the stream: kill -9 right after a poison record was dead-lettered.
    poison_crash: bool = False
    #: After the stream: a worker paused mid-batch past the session timeout.
    stale_pause: bool = False
    #: How long after its first dead letter the worker is stopped mid-batch.
    stale_delay: float = 0.03
    replay: bool = False
    clock_crash: int = 0
    clock_steps: bool = True
    settle_seconds: float = 240.0

    def full_plan(self, rng: random.Random) -> list[tuple[float, str]]:
        plan = list(self.plan)
        plan += [(rng.uniform(0.05, 0.95), "kill") for _ in range(self.kills)]
        if self.rebalance:
            plan += REBALANCE_PLAN
        if self.pause_seconds and not any(a == "pause" for _, a in plan):
            plan.append((0.45, "pause"))
        if self.services:
            plan += [(0.4, "kafka"), (0.7, "redis")]
        unknown = {a for _, a in plan} - set(ACTIONS)
        assert not unknown, f"unknown actions {unknown}"
        return sorted(plan)

    def scenario(self) -> str:
        parts = []
        if self.plan:
            parts.append("plan " + " ".join(f"{a}@{f:g}" for f, a in self.plan))
        if self.kills:
            parts.append(f"kill-9 x{self.kills}")
        if self.rebalance:
            parts.append("rebalance")
        if self.pause_seconds:
            parts.append(f"pause {self.pause_seconds:g}s")
        if self.services:
            parts.append("broker+redis restarts")
        if self.poison_after_crash:
            parts.append("poison after crashes")
        if self.poison_crash:
            parts.append("kill-9 right after a dead letter")
        if self.stale_pause:
            parts.append("pause mid-batch past the session timeout")
        if self.replay:
            parts.append("replay")
        if self.clock_crash:
            parts.append(f"clock boundary + kill-9 x{self.clock_crash}")
        return ", ".join(parts) or "no faults"


@dataclass
class Phase:
    name: str
    findings: Findings
    settle_seconds: float
    notes: list[str] = field(default_factory=list)
    #: Figures of the phase's fault, for tests (e.g. ``clock_changes``).
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class Report:
    options: Options
    namespace: str = ""
    phases: list[Phase] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    published: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""

    @property
    def mismatches(self) -> int:
        return sum(p.findings.mismatches for p in self.phases)

    @property
    def deadletter_repeats(self) -> int:
        """Poison records dead-lettered more than once (each phase sees them all)."""
        return len(
            {line for p in self.phases for line in p.findings.deadletter_repeated}
        )

    @property
    def ok(self) -> bool:
        return not self.error and self.mismatches == 0 and self.deadletter_repeats == 0

    def render(self) -> str:
        o = self.options
        lines = [
            f"scenario: {o.scenario()}",
            f"  seed {o.seed}, {o.contacts} contacts in {len(TENANTS)} tenants, "
            f"{o.workers} worker(s) at start, namespace {self.namespace}",
            f"faults injected ({len(self.faults)}):",
            *[f"  {line}" for line in self.faults],
            f"events processed: {self.published.get('records', 0)} input records "
            f"published ({self.published.get('distinct events', 0)} distinct valid "
            f"events, {self.published.get('duplicates', 0)} re-published with the "
            f"same event_id, {self.published.get('poison', 0)} poison)",
        ]
        repeated: set[str] = set()
        for phase in self.phases:
            f = phase.findings
            sources = {
                line.split(" dead-lettered")[0] for line in f.deadletter_repeated
            }
            new = sorted(sources - repeated)
            repeated |= sources
            lines += [
                f'phase "{phase.name}" (settled in {phase.settle_seconds:.1f} s):',
                f"  contacts checked {f.contacts}, mismatches {f.mismatches}",
                f"  membership records {f.membership_total} total, "
                f"{f.membership_distinct} distinct, "
                f"{f.membership_duplicates} duplicates by event_id",
                f"  dead letters read {f.deadletters}; poison dead-lettered more "
                f"than once (by source offset): {len(sources)} so far, "
                f"{len(new)} new in this phase",
                *[f"    {source}" for source in new[:LIMIT]],
                *f.lines(),
                *[f"  {n}" for n in phase.notes],
            ]
        m = self.metrics
        lines += [
            "worker metrics (/metrics summed over every worker process, as last "
            "scraped; a killed process's last second is missing):",
            f"  events applied {m.get('applied', 0):.0f}, duplicates suppressed "
            f"{m.get('duplicates', 0):.0f} (re-published with the same event_id: "
            f"{self.published.get('duplicates', 0)}; batches replayed after a "
            f"crash add to it), dead letters {m.get('dead_letters', 0):.0f}, "
            f"membership changes published {m.get('changes', 0):.0f}, "
            f"write conflicts {m.get('conflicts', 0):.0f}",
            *[f"note: {n}" for n in self.notes],
        ]
        if self.error:
            lines.append(f"ERROR: {self.error}")
        if self.phases and not self.error:
            counted = "equal" if self.mismatches == 0 else "do NOT all equal"
            lines.append(
                f"duplicates suppressed: {self.published.get('duplicates', 0)} "
                f"re-published events; every counter and signal {counted} the "
                f"model's, which counts each event_id once (workers' own count: "
                f"{m.get('duplicates', 0):.0f}, replays included)"
            )
        verdict = "PASS" if self.ok else "FAIL"
        lines.append(
            f"result: {verdict} (mismatches {self.mismatches}, poison dead-lettered "
            f"more than once {self.deadletter_repeats}), runtime {self.seconds:.1f} s"
        )
        return "\n".join(lines)


Action = Callable[[], Awaitable[None]]


class Run:
    """One scenario run: the cluster, the stream and the fault plan."""

    def __init__(self, options: Options, cluster: Cluster) -> None:
        self.o = options
        self.cluster = cluster
        self.rng = random.Random(options.seed * 7919)
        self.segments: SegmentIds = {}
        self.stream: Stream | None = None
        self.report = Report(options, namespace=cluster.namespace)
        self.resumes: list[asyncio.Task[None]] = []
        #: Dead letters read before a deliberate replay; those after it are the
        #: replay's own and are left out of the exactly-once check.
        self.letters_cutoff: int | None = None

    # -- set-up ----------------------------------------------------------------

    async def setup(self) -> Stream:
        c = self.cluster
        await c.start(self.o.workers)
        await c.set_clock(START)
        for tenant in TENANTS:
            await c.set_timezone(tenant.id, tenant.zone)
            self.segments[tenant.id] = {
                name: await c.create_segment(tenant.id, name, rule)
                for name, rule in RULES.items()
            }
        self.stream = generate(
            self.o.seed,
            TENANTS,
            START,
            self.o.contacts,
            self.o.events_per_contact,
            self.o.duplicate_rate,
            self.o.poison_rate,
        )
        return self.stream

    # -- faults ----------------------------------------------------------------

    def plan(self, chunks: int) -> dict[int, list[Action]]:
        """Actions to take after each chunk of the stream is published."""
        actions: dict[str, Action] = {
            "kill": self.kill_one,
            "kill-hard": self.leave_hard,
            "join": self.join,
            "join-ready": self.join_ready,
            "leave": self.leave_gracefully,
            "pause": self.pause_one,
            "kafka": lambda: self.restart_service("kafka"),
            "redis": lambda: self.restart_service("redis"),
        }
        plan: dict[int, list[Action]] = {}

        def at(fraction: float, action: Action) -> None:
            index = max(0, min(chunks - 1, round(fraction * chunks)))
            plan.setdefault(index, []).append(action)

        if self.o.clock_steps:
            at(0.3, lambda: self.step_clock(timedelta(minutes=50)))
            at(0.6, lambda: self.step_clock(timedelta(minutes=55)))  # Kolkata 00:15
        for fraction, name in self.o.full_plan(self.rng):
            at(fraction, actions[name])
        return plan

    async def step_clock(self, delta: timedelta) -> None:
        await self.cluster.set_clock(await self.cluster.now() + delta)

    def _pick(self, nodes: list[Node]) -> Node:
        return self.rng.choice(nodes)

    async def _poison_burst(self) -> None:
        if self.o.poison_after_crash and self.stream is not None:
            burst = self.stream.poison_burst(self.o.poison_after_crash)
            self.stream.records += burst
            await self.cluster.publish(burst)
            self.cluster.note(f"{len(burst)} poison records published after the crash")

    async def _kill(self, node: Node) -> None:
        c = self.cluster
        await c.cancel_start(node)
        if not node.alive:
            return
        if node.paused:
            c.resume(node)
        await c.scrape(node)
        c.kill(node)
        await self._poison_burst()

    async def kill_one(self) -> None:
        """kill -9 a running worker a random moment from now; restart it soon."""
        c = self.cluster
        if not any(n.alive for n in c.nodes):
            await c.wait_started()
        await asyncio.sleep(self.rng.uniform(0.0, 1.0))
        running = [n for n in c.nodes if n.alive]
        if not running:
            return
        # A paused worker is left paused: its pause is a fault of its own.
        node = self._pick([n for n in running if not n.paused] or running)
        await self._kill(node)
        c.restart_soon(node, self.rng.uniform(0.0, 1.5))

    async def join(self) -> None:
        c = self.cluster
        if sum(n.alive or n.starting is not None for n in c.nodes) >= MAX_WORKERS:
            c.note(f"join skipped: {MAX_WORKERS} workers already")
            return
        idle = [n for n in c.nodes if not n.alive and n.starting is None]
        if idle:
            c.restart_soon(idle[0])
        else:
            node = await c.add_node(wait=False)
            node.starting = asyncio.create_task(c.wait_ready(node))

    async def join_ready(self) -> None:
        await self.join()
        await self.cluster.wait_started()

    def _settled_nodes(self) -> list[Node]:
        """Serving workers that are not in the middle of starting."""
        return [n for n in self.cluster.serving() if n.starting is None]

    async def _one_of_several(self, what: str) -> Node | None:
        await self.cluster.wait_started()
        nodes = self._settled_nodes()
        if len(nodes) < 2:
            self.cluster.note(f"{what} skipped: fewer than two workers serving")
            return None
        return self._pick(nodes)

    async def leave_gracefully(self) -> None:
        node = await self._one_of_several("graceful leave")
        if node is not None:
            await self.cluster.stop(node)

    async def leave_hard(self) -> None:
        node = await self._one_of_several("hard leave")
        if node is not None:
            await self._kill(node)

    async def pause_one(self) -> None:
        """SIGSTOP one of several workers past the session timeout, then SIGCONT."""
        c = self.cluster
        node = await self._one_of_several("pause")
        if node is None:
            return
        await c.scrape(node)
        c.pause(node)

        async def resume_later() -> None:
            await asyncio.sleep(self.o.pause_seconds)
            if node.paused and node.alive:
                c.resume(node)

        self.resumes.append(asyncio.create_task(resume_later()))

    async def restart_service(self, service: str) -> None:
        await self.cluster.service("restart", service)

    # -- phases ----------------------------------------------------------------

    async def settle(self) -> float:
        c = self.cluster
        for task in self.resumes:
            await task
        self.resumes.clear()
        await c.wait_started()
        if not c.serving():
            node = next(n for n in c.nodes if not n.alive)
            await c.spawn(node)
        started = time.monotonic()
        await c.settle(self.o.settle_seconds)
        return time.monotonic() - started

    async def check(
        self, name: str, settled: float, deadletters: Sequence[Any] | None = None
    ) -> Phase:
        assert self.stream is not None
        if deadletters is None and self.letters_cutoff is not None:
            deadletters = self.cluster.deadletters.records[: self.letters_cutoff]
        findings = await verify(
            self.cluster, self.stream, self.segments, RULES, deadletters=deadletters
        )
        phase = Phase(name, findings, settled)
        self.report.phases.append(phase)
        return phase

    async def run_stream(self) -> None:
        """Publish the chunks at ``pace`` while the plan's faults happen.

        The faults run in their own task: an action waits for the chunk it is
        planned after, and a slow one (a restart, a worker joining) does not
        hold the stream up.
        """
        assert self.stream is not None
        chunks = list(self.stream.chunks(self.o.chunks))
        plan = self.plan(len(chunks))
        published = [asyncio.Event() for _ in chunks]

        async def publisher() -> None:
            for i, chunk in enumerate(chunks):
                await self.cluster.publish(chunk)
                published[i].set()
                await asyncio.sleep(self.o.pace * self.rng.uniform(0.5, 1.5))

        async def faults() -> None:
            for i in sorted(plan):
                await published[i].wait()
                for action in plan[i]:
                    await action()

        await asyncio.gather(publisher(), faults())
        await self.check("after the stream", await self.settle())

    async def stale_pause(self) -> None:
        """A worker paused mid-batch past the session timeout, resumed after
        another one has applied that batch and newer events.

        Both workers are stopped (SIGSTOP), poison records and many events are
        published, and only the first is continued; the moment it has
        dead-lettered a record (so it holds a batch it has not applied yet) it
        is stopped again and the second continued. The group moves the first
        one's partitions over once its session expires; the second applies
        everything, and newer events for the same contacts. Then the first is
        continued: its batch is stale, and nothing of it may land.
        """
        c = self.cluster
        s = self.stream
        assert s is not None
        await c.wait_started()
        while len(c.serving()) < 2:
            await self.join_ready()
        first, second = c.serving()[:2]
        conflicts_before = c.scrapes.total("profilestream_write_conflicts_total")
        refused_before = c.grep_logs("Offset commit refused")
        c.pause(first)
        c.pause(second)
        load = s.poison_burst(8) + s.more_events(1500)
        s.records += load
        await c.publish(load)
        letters = len(c.deadletters.records)
        c.resume(first)
        await c.deadletters.wait_for_more(letters, 30)
        await asyncio.sleep(self.o.stale_delay)  # into the fold of its batch
        c.pause(first)
        c.resume(second)
        paused_at = time.monotonic()
        # The second takes over once the first one's session has expired.
        await c.settle(self.o.settle_seconds)
        newer = s.more_events(300)
        s.records += newer
        await c.publish(newer)
        await c.settle(self.o.settle_seconds)
        await asyncio.sleep(
            max(0.0, self.o.pause_seconds - (time.monotonic() - paused_at))
        )
        c.resume(first)
        phase = await self.check(
            "a worker paused mid-batch past the session timeout, then resumed",
            await self.settle(),
        )
        await c.scrape_all()
        conflicts = c.scrapes.total("profilestream_write_conflicts_total")
        refused = c.grep_logs("Offset commit refused") - refused_before
        phase.counts.update(
            write_conflicts=round(conflicts - conflicts_before), refused_commits=refused
        )
        phase.notes.append(
            f"{first.name} was paused {time.monotonic() - paused_at:.0f} s with a "
            f"batch in hand; after it resumed: {refused} offset commits refused, "
            f"{conflicts - conflicts_before:.0f} compare-and-set writes lost to "
            "newer state and redone"
        )

    async def replay(self) -> None:
        """Stop, rewind the group to offset 0, start again: nothing may move."""
        c = self.cluster
        before = {r["event_id"] for r in c.membership.values()}
        total_before = len(c.membership.records)
        letters_before = len(c.deadletters.records)
        self.letters_cutoff = letters_before
        restart = [n for n in c.nodes if n.alive] or c.nodes[:1]
        for node in [n for n in c.nodes if n.alive]:
            await c.stop(node)
        await c.reset_group_to_earliest()
        for node in restart:
            await c.spawn(node)
        phase = await self.check(
            "after replaying the group from offset 0",
            await self.settle(),
        )
        after = {r["event_id"] for r in c.membership.values()}
        for event_id in sorted(after - before):
            phase.findings.membership.append(f"replay published new change {event_id}")
        phase.notes.append(
            f"the replay re-read every input record; it published "
            f"{len(c.membership.records) - total_before} membership records "
            f"({len(after - before)} new event ids) and dead-lettered "
            f"{len(c.deadletters.records) - letters_before} records again "
            "(a deliberate replay re-reads the poison records too; not counted)"
        )

    async def clock_crashes(self) -> None:
        """Past a local midnight, kill -9 every worker at once, restart, check.

        Besides the usual checks: every clock-driven change read since the
        clock moved carries as ``at`` a local midnight of its tenant inside the
        step, whichever process published it.
        """
        c = self.cluster
        for k in range(self.o.clock_crash):
            tenant = TENANTS[k % len(TENANTS)]
            before = await c.now()
            local = before.astimezone(tenant.tz)
            midnight = datetime.combine(
                local.date() + timedelta(days=1), datetime.min.time(), tenant.tz
            )
            seen = len(c.membership.records)
            target = midnight.astimezone(UTC) + timedelta(minutes=1)
            await c.set_clock(target)
            moment = await self.kill_moment(k)
            victims = [n for n in c.nodes if n.alive]
            for node in victims:
                c.kill(node)
            due, outboxes = await c.due_and_outboxes()
            c.note(
                f"killed {moment} past {tenant.id}'s midnight: {due} wake-ups "
                f"still due, {outboxes} outboxes unpublished"
            )
            for node in victims:
                await c.spawn(node)
            phase = await self.check(
                f"clock past {tenant.id}'s midnight, kill -9 #{k + 1}",
                await self.settle(),
            )
            new = [orjson.loads(r.value) for r in c.membership.records[seen:]]
            clock = [r for r in new if r["reason"] == "clock"]
            for record in clock:
                at = datetime.fromisoformat(record["at"].replace("Z", "+00:00"))
                zone = next(t.tz for t in TENANTS if t.id == record["tenant_id"])
                if not before < at <= target or at.astimezone(
                    zone
                ).time() != time_of_day(0):
                    phase.findings.membership.append(
                        f"clock change at {record['at']}, not a local midnight "
                        f"between {rfc(before)} and {rfc(target)}: {record}"
                    )
            phase.counts.update(
                clock_changes=len(clock), due_at_kill=due, outboxes_at_kill=outboxes
            )
            phase.notes.append(
                f"killed {moment}: {due} wake-ups due, {outboxes} outboxes "
                f"unpublished; {len(clock)} clock-driven records read since "
                f"({len(new) - len({r['event_id'] for r in new})} repeated)"
            )

    async def poison_crash(self) -> None:
        """Poison right after a crash, then a crash right after a dead letter.

        1. kill -9 every worker; while they are down, publish poison records
           among valid events; start them again: their first batches hold it.
        2. SIGSTOP every worker, publish a poison record and many valid events
           behind it, SIGCONT, so one batch holds them; the moment the poison's
           dead letter can be read, kill -9 every worker. The batch is still
           being applied then and its offsets are not committed, so the
           restarted worker processes it again.
        """
        c = self.cluster
        s = self.stream
        assert s is not None
        victims = [n for n in c.nodes if n.alive]
        for node in victims:
            await c.cancel_start(node)
            c.kill(node)
        burst = s.more_events(60) + s.poison_burst(6)
        self.rng.shuffle(burst)
        s.records += burst
        await c.publish(burst)
        c.note("60 events and 6 poison records published while every worker was down")
        for node in victims:
            await c.spawn(node)
        await c.settle(self.o.settle_seconds)

        serving = c.serving()
        for node in serving:
            c.pause(node)
        load = s.poison_burst(1) + s.more_events(1500)
        s.records += load
        await c.publish(load)
        letters = len(c.deadletters.records)
        for node in serving:
            c.resume(node)
        await c.deadletters.wait_for_more(letters, 30)
        for node in serving:
            c.kill(node)
        behind = await c.lag()
        c.note(
            f"killed as the poison's dead letter was read; {behind} input records "
            "not committed"
        )
        for node in serving:
            await c.spawn(node)
        phase = await self.check(
            "poison after a crash, kill -9 right after a dead letter",
            await self.settle(),
        )
        phase.counts["uncommitted_at_kill"] = behind
        phase.notes.append(
            f"at the kill {behind} input records were not committed (they were "
            "processed again after the restart)"
        )

    async def kill_moment(self, k: int) -> str:
        """Wait for the k-th kind of moment to kill at, after a clock move:
        at once; as soon as the sweep has written a first change that Kafka has
        not acknowledged yet (an outbox in Redis); or when the sweep has done
        part of the due contacts."""
        c = self.cluster
        mode = (k + 1) % 3  # an outbox waiting first: the worst moment
        if mode == 0:
            return "at once"
        members = await c.due_members()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            due, outboxes = await c.progress(members)
            if mode == 1 and outboxes:
                return "with an outbox waiting for Kafka"
            if mode == 2 and 0 < due < len(members):
                return f"after the sweep did {len(members) - due} of {len(members)}"
            if due == 0 and not outboxes:
                break
        return "after the sweep (the moment looked for was missed)"

    def finish(self) -> None:
        c = self.cluster
        r = self.report
        r.faults = list(c.log)
        if self.stream is not None:
            s = self.stream
            r.published = {
                "records": len(s.records),
                "distinct events": len(
                    {(e["tenant_id"], e["event_id"]) for e in s.events}
                ),
                "duplicates": s.duplicates,
                "poison": len(s.poisons),
            }
        total = c.scrapes.total
        r.metrics = {
            "applied": total("profilestream_events_applied_total"),
            "duplicates": total("profilestream_duplicates_suppressed_total"),
            "dead_letters": total("profilestream_dead_letters_total"),
            "changes": total("profilestream_membership_changes_total"),
            "conflicts": total("profilestream_write_conflicts_total"),
        }
        again = c.membership.redelivered + c.deadletters.redelivered
        if again:
            r.notes.append(
                f"the Kafka client handed {again} records of the output topics to "
                "the readers a second time (same partition and offset; counted once)"
            )
        refused = c.grep_logs("Offset commit refused")
        failed = c.grep_logs("Offset commit failed")
        if refused or failed:
            r.notes.append(
                f"workers logged {refused} refused and {failed} failed offset commits "
                "(their batches were replayed by the next owner)"
            )
        r.notes.append("worker logs: " + " ".join(str(p) for p in c.log_files()))


async def run(
    options: Options,
    kafka_bootstrap: str,
    redis_url: str,
    *,
    services_dir: str | None = None,
    keep: bool = False,
) -> Report:
    """Run one scenario end to end and return its report (never raises on a
    finding; a timeout or crash of the harness is kept in ``report.error``)."""
    started = time.monotonic()
    cluster = Cluster(kafka_bootstrap, redis_url, services_dir=services_dir)
    run_ = Run(options, cluster)
    try:
        await run_.setup()
        await run_.run_stream()
        if options.stale_pause:
            await run_.stale_pause()
        if options.poison_crash:
            await run_.poison_crash()
        if options.replay:
            await run_.replay()
        if options.clock_crash:
            await run_.clock_crashes()
    except Exception as exc:
        run_.report.error = f"{exc.__class__.__name__}: {exc}"
    finally:
        with contextlib.suppress(Exception):
            await cluster.scrape_all()
        run_.finish()
        await cluster.close(cleanup=not keep)
        run_.report.seconds = time.monotonic() - started
    return run_.report


# --- command line ----------------------------------------------------------------


def _services_env(services_dir: str | None) -> dict[str, str]:
    """KAFKA_BOOTSTRAP and REDIS_URL: the environment's, or scripts/services.py's."""
    if services_dir is None and os.environ.get("KAFKA_BOOTSTRAP"):
        return {
            "KAFKA_BOOTSTRAP": os.environ["KAFKA_BOOTSTRAP"],
            "REDIS_URL": os.environ["REDIS_URL"],
        }
    env = dict(os.environ)
    if services_dir is not None:
        env["PROFILESTREAM_SERVICES_DIR"] = services_dir
    command = "up" if services_dir is not None else "env"
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "services.py"), command],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = {}
    for line in out.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export":
            name, _, value = words[1].partition("=")
            found[name] = value
    return found


def parse_args(argv: list[str] | None) -> tuple[Options, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--all", action="store_true", help="every scenario below")
    p.add_argument("--replay", action="store_true")
    p.add_argument("--kills", type=int, default=0, metavar="N")
    p.add_argument("--rebalance", action="store_true")
    p.add_argument("--pause", action="store_true", help="SIGSTOP past the timeout")
    p.add_argument("--pause-seconds", type=float, default=16.0)
    p.add_argument("--services", action="store_true")
    p.add_argument("--poison", action="store_true")
    p.add_argument("--clock-crash", type=int, default=0, metavar="N")
    p.add_argument("--seed", type=int, default=4)
    p.add_argument("--contacts", type=int, default=200)
    p.add_argument("--events-per-contact", type=int, default=8)
    p.add_argument("--chunks", type=int, default=30)
    p.add_argument("--pace", type=float, default=0.3, help="seconds between chunks")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--keep", action="store_true", help="keep the Redis keys")
    a = p.parse_args(argv)
    if a.all:
        a.replay = a.rebalance = a.pause = a.services = a.poison = True
        a.kills = a.kills or 10
        a.clock_crash = a.clock_crash or 3
    options = Options(
        seed=a.seed,
        contacts=a.contacts,
        events_per_contact=a.events_per_contact,
        chunks=a.chunks,
        pace=a.pace,
        workers=max(a.workers, 2 if a.pause and not a.rebalance else 1),
        replay=a.replay,
        kills=a.kills,
        rebalance=a.rebalance,
        pause_seconds=a.pause_seconds if a.pause else 0.0,
        services=a.services,
        poison_after_crash=3 if a.poison else 0,
        poison_crash=a.poison,
        stale_pause=a.pause,
        clock_crash=a.clock_crash,
    )
    return options, a


def main(argv: list[str] | None = None) -> int:
    options, args = parse_args(argv)
    # aiokafka logs expected errors (leaders moving, a broker away) at ERROR.
    logging.basicConfig(level=logging.CRITICAL)
    services_dir = os.environ.get("PROFILESTREAM_SERVICES_DIR")
    if options.services:
        default = str(ROOT / ".services")
        if not services_dir or Path(services_dir).resolve() == Path(default):
            print(
                "--services restarts Kafka and Redis: point PROFILESTREAM_SERVICES_DIR "
                "at a private state dir (others' tests share the default pair)",
                file=sys.stderr,
            )
            return 2
    env = _services_env(services_dir)
    report = asyncio.run(
        run(
            options,
            env["KAFKA_BOOTSTRAP"],
            env["REDIS_URL"],
            services_dir=services_dir,
            keep=args.keep,
        )
    )
    print(report.render())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
