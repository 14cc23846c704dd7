"""The one update path: events, clock ticks and backfills all go through here.

``Engine.update`` takes a set of contacts, with the events to fold into each
(possibly none), and brings their profiles and segment memberships up to
date:

1. Load every profile of the set in one round trip.
2. Fold the events and re-evaluate the active segments in Python, at "now".
3. Compare-and-set every changed profile together with its outbox (the
   membership records still to publish). Contacts that lost a race with
   another writer are loaded and computed again; nothing is overwritten.
4. Publish every outbox to ``segments.membership`` and wait for Kafka's
   acknowledgement.
5. Clear the published outboxes, index the members, move the wake-ups on.

A crash after 3 leaves the outbox in Redis and the contact's wake-up due at
once, so whoever touches the contact next (the redelivered event, or the
clock sweep) publishes it again with the same event ids. The caller commits
Kafka offsets only after ``update`` returns.

Pipelined deliveries. For batches of events, ``apply_events`` returns after
step 3 and leaves steps 4-5 (the delivery) running while the caller fetches
and applies the next batch: at a modest rate a batch's Kafka acknowledgement
and finishing script are a large part of its time (56-record batches at 4,400
events/s: 3.5 of 12 ms). At most one delivery is in flight: a batch's delivery
starts once the previous one is done, so records leave in batch order and a
slow Kafka holds the ingest back. A batch with a contact whose outbox is still
being delivered waits for that delivery before it loads the contact, so a
contact's records are never published out of order or twice by this worker.
Every other update (clock sweeps, backfills, deletions, single contacts) waits
for the delivery in flight first, so the sweep never mistakes an outbox being
published for a crashed writer's. The caller commits a batch's offsets once
its delivery is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping, Sequence, Set
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import lru_cache
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from schemas.events import Event
from segments.membership import (
    Change,
    Reason,
    decode_outbox,
    encode_outbox,
    evaluate,
    next_wake,
    record,
)
from segments.registry import RegistryCache, Segment
from signals.cache import ProfileCache
from signals.errors import StoreError
from signals.keys import ContactRef
from signals.profile import Profile, stored_state
from signals.store import ContactWrite, Finished, Store
from signals.view import ContactView
from signals.windows import local_date_us, start_of_local_day, to_us
from streams.metrics import Metrics
from streams.retry import RetryPolicy

logger = logging.getLogger(__name__)

#: How often a contact that keeps losing compare-and-set races is retried
#: within one update before the whole batch is retried from the caller.
MAX_ATTEMPTS = 8

#: Most boundaries one contact is walked through in one clock update; beyond
#: that the wake-up stays due and the next sweep carries on from there.
MAX_BOUNDARIES = 400


@lru_cache(maxsize=64)
def _local_today(now_us: int, tz: ZoneInfo) -> date:
    """``local_date_us`` for the one "now" of an update, asked per contact."""
    return local_date_us(now_us, tz)


@lru_cache(maxsize=4096)
def _last_day_before(instant_us: int, tz: ZoneInfo) -> date:
    """The last local date in ``tz`` that starts before ``instant_us``.

    Cached: wake-ups are local midnights, shared by many contacts."""
    day = local_date_us(instant_us, tz)
    if to_us(start_of_local_day(day, tz)) < instant_us:
        return day
    return day - timedelta(days=1)


class MembershipSink(Protocol):
    async def publish_membership(self, records: Sequence[dict[str, Any]]) -> None: ...


class Clock:
    """ "Now" for the whole worker: the system clock, or the shared test clock.

    With ``manual=True`` the instant set through ``POST /v1/admin/clock`` is
    kept in Redis, so every worker of the group sees the same "now"; until it
    is first set, the system clock serves.
    """

    def __init__(self, *, manual: bool) -> None:
        self.manual = manual
        self.manual_us: int | None = None

    def observe(self, stored_us: int | None) -> None:
        if self.manual and stored_us is not None:
            self.manual_us = stored_us

    def now_us(self) -> int:
        if self.manual and self.manual_us is not None:
            return self.manual_us
        return time.time_ns() // 1000


@dataclass(slots=True)
class Outcome:
    """What one ``update`` did, for metrics and logs."""

    applied: int = 0
    duplicates: int = 0
    touched: int = 0
    written: int = 0
    conflicts: int = 0
    changes: list[Change] = field(default_factory=list)
    published: int = 0


@dataclass(slots=True)
class _Staged:
    version: int
    outbox: list[dict[str, Any]]
    raw_outbox: bytes
    wake_us: int | None


#: Contacts per chunk of compare-and-set writes sent while a batch is being
#: computed: Redis runs one chunk while Python computes the next.
WRITE_CHUNK = 250

#: Contacts computed between two yields to the event loop, which lets the
#: chunks already sent reach Redis and their replies come back.
YIELD_EVERY = 50


class _WriteStream:
    """One attempt's compare-and-set writes, sent in chunks as they are ready.

    Redis executes a chunk while Python computes the next one, instead of
    the whole batch waiting for one write at the end. Each contact is in one
    chunk, and chunks touch disjoint contacts, so their order does not
    matter; a chunk that fails fails the update as one write of the whole
    batch would (a non-transactional pipeline could already be applied in
    part): the caller retries, the compare-and-set and the deduplication
    make the retry exact.
    """

    __slots__ = (
        "_sent_wakeups",
        "_sent_writes",
        "_since_yield",
        "_store",
        "_tasks",
        "wakeups",
        "writes",
    )

    def __init__(self, store: Store) -> None:
        self._store = store
        self.writes: list[ContactWrite] = []
        self.wakeups: list[tuple[ContactRef, int, int | None]] = []
        self._sent_writes = self._sent_wakeups = 0
        self._since_yield = 0
        self._tasks: list[asyncio.Task[set[ContactRef]]] = []

    async def step(self) -> None:
        """Call once per contact: sends a full chunk, yields now and then."""
        if len(self.writes) - self._sent_writes >= WRITE_CHUNK:
            self._send()
            self._since_yield = 0
            await asyncio.sleep(0)
            return
        self._since_yield += 1
        if self._since_yield >= YIELD_EVERY and self._tasks:
            self._since_yield = 0
            await asyncio.sleep(0)

    def _send(self) -> None:
        """Send the writes and wake-ups computed since the last chunk.

        The wake-ups go with their chunk: holding them all for the last one
        (one script call per wake-up shard instead of one per shard and
        chunk) left Redis filing them while the batch waited, about 10 ms of
        a 2,000-record batch (``hot_path.py``, 3 interleaved pairs)."""
        writes = self.writes[self._sent_writes :]
        wakeups = self.wakeups[self._sent_wakeups :]
        self._sent_writes, self._sent_wakeups = len(self.writes), len(self.wakeups)
        if writes or wakeups:
            self._tasks.append(asyncio.create_task(self._store.write(writes, wakeups)))

    async def abandon(self) -> None:
        """Wait for the chunks already sent, ignoring their outcome."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def finish(self) -> set[ContactRef]:
        """Send what is left, wait for every chunk; the contacts that lost."""
        self._send()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        conflicts: set[ContactRef] = set()
        for result in results:
            if isinstance(result, BaseException):
                raise result
            conflicts |= result
        return conflicts


class Engine:
    def __init__(
        self,
        store: Store,
        cache: RegistryCache,
        sink: MembershipSink,
        clock: Clock,
        *,
        dedup_horizon_us: int,
        metrics: Metrics | None = None,
        profiles: ProfileCache | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.store = store
        self.cache = cache
        self.sink = sink
        self.clock = clock
        self.dedup_horizon_us = dedup_horizon_us
        self.metrics = metrics or Metrics()
        self.profiles = profiles if profiles is not None else ProfileCache(0)
        # Updates of one worker run one at a time: an outbox being published
        # is never picked up again by this worker's clock sweep or a backfill
        # (workers still race each other; compare-and-set settles that).
        self._serial = asyncio.Lock()
        #: Retries a pipelined delivery while Kafka or Redis is away.
        self.retry = retry or RetryPolicy()
        #: The delivery in flight (see the module docstring) and its contacts.
        self._delivery: asyncio.Task[None] | None = None
        self._delivering: Set[ContactRef] = frozenset()

    async def now_us(self) -> int:
        """Current "now", refreshing the shared manual clock first."""
        if self.clock.manual:
            self.clock.observe(await self.store.get_clock())
        return self.clock.now_us()

    async def update(
        self,
        work: Mapping[ContactRef, Sequence[Event]],
        *,
        reason: Reason,
        only: Segment | None = None,
        drop: Segment | None = None,
    ) -> Outcome:
        """Bring the contacts of ``work`` up to date; see the module docstring.

        ``only`` restricts evaluation to one segment (a backfill); ``drop``
        ends one segment's memberships (a deletion).
        """
        async with self.exclusive():
            return await self.update_exclusive(
                work, reason=reason, only=only, drop=drop
            )

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold this to read wake-ups and update without another update between.

        Taking it also waits for the delivery in flight: inside, every outbox
        this worker wrote is either published and cleared or a failure's.
        """
        async with self._serial:
            await self.delivered()
            yield

    async def delivered(self) -> None:
        """Wait for the delivery in flight, if there is one.

        Shielded: a waiter that is cancelled leaves the delivery running.
        """
        task = self._delivery
        if task is None:
            return
        try:
            await asyncio.shield(task)
        finally:
            if task.done() and self._delivery is task:
                self._delivery, self._delivering = None, frozenset()

    async def apply_events(
        self, work: Mapping[ContactRef, Sequence[Event]]
    ) -> tuple[Outcome, asyncio.Task[None]]:
        """Steps 1-3 for a batch of events; returns with steps 4-5 running.

        The returned task (the delivery) retries while Kafka or Redis is away
        and never raises: should publishing fail for good, the records stay
        in their contacts' outboxes, due at once, for the clock sweep. Wait
        for it before committing the batch's offsets. ``Outcome.published`` is
        set when it is done.
        """
        async with self._serial:
            if not self._delivering.isdisjoint(work):
                await self.delivered()
            outcome, staged = await self._apply(
                work, reason="event", only=None, drop=None
            )
            # One delivery at a time, in batch order.
            await self.delivered()
            task = asyncio.create_task(self._deliver(staged, outcome))
            self._delivery, self._delivering = task, frozenset(staged)
            return outcome, task

    async def _deliver(
        self, staged: Mapping[ContactRef, _Staged], outcome: Outcome
    ) -> None:
        """Steps 4-5 of a pipelined batch, each retried on its own."""
        started = time.perf_counter()
        records = [item for s in staged.values() for item in s.outbox]
        try:
            if records:
                await self.retry.call(
                    "publishing membership changes",
                    lambda: self._publish(records, outcome),
                )
            await self.retry.call(
                "clearing published outboxes", lambda: self._finish(staged)
            )
        except asyncio.CancelledError:
            self.profiles.discard(staged)
            raise
        except Exception:
            self.profiles.discard(staged)
            logger.exception(
                "Delivering %d membership records of %d contacts failed; they "
                "stay in the contacts' outboxes, and the clock sweep publishes them",
                len(records),
                len(staged),
            )
            return
        logger.debug(
            "Delivered %d membership records of %d contacts in %.1f ms",
            len(records),
            len(staged),
            (time.perf_counter() - started) * 1000,
        )

    async def update_exclusive(
        self,
        work: Mapping[ContactRef, Sequence[Event]],
        *,
        reason: Reason,
        only: Segment | None = None,
        drop: Segment | None = None,
    ) -> Outcome:
        """``update`` for a caller that already holds ``exclusive()``."""
        outcome, staged = await self._apply(work, reason=reason, only=only, drop=drop)
        # 4. Publish and wait for Kafka, then 5. clear and index.
        started = time.perf_counter()
        try:
            await self._publish_and_finish(staged, outcome)
        except BaseException:
            # Whether those outboxes are still stored is unknown now.
            self.profiles.discard(staged)
            raise
        logger.debug(
            "Published and finished %d contacts in %.1f ms",
            len(staged),
            (time.perf_counter() - started) * 1000,
        )
        return outcome

    async def backfill(self, refs: Sequence[ContactRef], segment: Segment) -> Outcome:
        """``update`` of ``refs`` with ``reason="definition", only=segment``,
        looking before it leaps.

        Most contacts of a backfill keep both their recorded answer for the
        segment and their wake-up instant, and then the update path would
        write nothing for them; it would still build each one's ``Profile``
        and book-keep it, four times the cost of reading its stored document.
        So every contact is first read as ``stored_state`` (one round trip
        for all; a contact whose cached profile has the stored version is
        read from the cache, without decoding), and only those whose answer
        differs from the recorded one, whose wake-up the segment would move,
        or whose outbox is still to be published go through the update path,
        which reads them again and decides as it always does. The look
        applies the update path's own rules (``record`` and ``_next_wake``
        with ``only``): a contact it passes over is one the update path would
        have left as it is.
        """
        async with self.exclusive():
            documents, pending, epoch, clock = await self.store.documents(refs)
            await self.cache.refresh(epoch)
            self.clock.observe(clock)
            now = self.clock.now_us()
            tz = self.cache.tenant(segment.tenant_id).tz
            today = _local_today(now, tz)
            rule = segment.compiled
            go: list[ContactRef] = []
            skipped = 0
            for ref in refs:
                found = documents.get(ref)
                if found is None:
                    continue  # no such contact: nothing to evaluate
                if ref in pending:
                    go.append(ref)
                    continue
                version, document = found
                cached = self.profiles.get(ref)
                if cached is not None and cached.profile.version == version:
                    # What this worker wrote last, still what Redis holds.
                    state = cached.profile.state(ref.tenant_id, ref.contact_id, tz)
                else:
                    state = stored_state(document, ref.tenant_id, ref.contact_id, tz)
                member = rule.matches(state.view, today, tz)
                recorded = state.membership.get(segment.id, 0) % 2 == 1
                if member != recorded or state.next_wake_segment == segment.id:
                    go.append(ref)
                    continue
                # ``_next_wake`` keeps the stored wake-up unless the segment
                # changes on a day that starts before it.
                stored = state.next_wake_us
                until = None if stored is None else _last_day_before(stored, tz)
                if rule.next_change(state.view, today, tz, member, until) is None:
                    skipped += 1
                else:
                    go.append(ref)
            outcome = Outcome()
            if go:
                outcome = await self.update_exclusive(
                    {r: [] for r in go}, reason="definition", only=segment
                )
            outcome.touched += skipped
            return outcome

    async def _apply(
        self,
        work: Mapping[ContactRef, Sequence[Event]],
        *,
        reason: Reason,
        only: Segment | None,
        drop: Segment | None,
    ) -> tuple[Outcome, dict[ContactRef, _Staged]]:
        """Steps 1-3: load, fold and evaluate, compare-and-set; what to publish."""
        outcome = Outcome()
        staged: dict[ContactRef, _Staged] = {}
        pending = list(work)
        keep: set[ContactRef] = set()
        for attempt in range(MAX_ATTEMPTS):
            # 1. One read for the whole set, plus the epoch and the clock;
            #    for events, profiles this worker wrote last come from its
            #    cache (a lost race reads them again).
            taken = self.profiles.take(pending) if attempt == 0 else {}
            if attempt == 0:
                # Events keep what they wrote in the cache; a backfill or a
                # clock sweep walks contacts the ingest may not see again
                # soon, so it only puts back what it took out.
                keep = set(work) if reason == "event" else set(taken)
            # Only events trust the cache: new events always change the
            # profile, so their compare-and-set catches an entry that another
            # writer (the leader's sweep, a backfill elsewhere) made stale. A
            # sweep or a backfill may find nothing to write, and would then
            # act on a stale entry unnoticed (keep an old wake-up, miss a
            # change): those read Redis.
            cached = taken if reason == "event" else {}
            missing = [ref for ref in pending if ref not in cached]
            t0 = time.perf_counter()
            with self.metrics.redis_seconds.labels("load").time():
                loaded = await self.store.load(missing)
            t1 = time.perf_counter()
            for ref, entry in cached.items():
                loaded.profiles[ref] = entry.profile
                if entry.outbox:
                    loaded.outboxes[ref] = entry.outbox
            await self.cache.refresh(loaded.epoch)
            self.clock.observe(loaded.clock_us)
            now = self.clock.now_us()
            # What Redis holds for each contact once this attempt's writes win.
            settled: dict[ContactRef, tuple[Profile, bytes]] = {}

            # 2. Fold and evaluate, in memory; 3. compare-and-set, in chunks
            #    sent while the rest of the batch is still being computed.
            stream = _WriteStream(self.store)
            writes, wakeups = stream.writes, stream.wakeups
            attempt_changes: dict[ContactRef, list[Change]] = {}
            applied: dict[ContactRef, list[str]] = {}
            duplicates: dict[ContactRef, int] = {}
            try:
                for ref in pending:
                    await stream.step()
                    profile = loaded.profiles[ref]
                    stored_version = profile.version
                    tenant = self.cache.tenant(ref.tenant_id)
                    tz = tenant.tz
                    changed = False
                    caused_by: str | None = None
                    for event in work[ref]:
                        if profile.apply(event, tz, now, self.dedup_horizon_us):
                            changed = True
                            caused_by = event.event_id
                            applied.setdefault(ref, []).append(event.type)
                        else:
                            duplicates[ref] = duplicates.get(ref, 0) + 1
                    if stored_version == 0 and not changed:
                        if reason == "clock":
                            # A wake-up without a contact.
                            wakeups.append((ref, 1, None))
                        continue  # no such contact (yet): nothing to evaluate
                    outcome.touched += 1
                    pending_outbox = decode_outbox(loaded.outboxes.get(ref, b""))
                    # Everything, unless only some rules read what the events changed.
                    affected = self._affected(
                        profile, stored_version, tenant.active, now, reason
                    )
                    if affected == []:
                        # The events changed nothing any rule reads and no
                        # boundary has passed: every answer and the wake-up stand.
                        raw = loaded.outboxes.get(ref, b"")
                        if changed:
                            profile.version = stored_version + 1
                            raw = encode_outbox(pending_outbox)
                            writes.append(ContactWrite(ref, profile, raw, is_new=False))
                        settled[ref] = (profile, raw)
                        if pending_outbox:
                            staged[ref] = _Staged(
                                profile.version,
                                pending_outbox,
                                raw,
                                profile.next_wake_us,
                            )
                        continue

                    view = profile.view(ref.tenant_id, ref.contact_id, tz)
                    today = _local_today(now, tz)
                    at = now
                    changes: list[Change] = []
                    membership_before = len(profile.membership)
                    if drop is not None:
                        gone = record(
                            profile,
                            ref,
                            drop,
                            False,
                            reason=reason,
                            at_us=at,
                            caused_by=None,
                        )
                        changes += [gone] if gone else []
                        profile.membership.pop(drop.id, None)
                    if only is not None:
                        segments: Sequence[Segment] = (only,)
                    else:
                        segments = tenant.active if affected is None else affected
                    if reason == "clock":
                        walked, wake, wake_segment = self._walk_boundaries(
                            profile, view, segments, now, tz
                        )
                        changes += walked
                    else:
                        answers: dict[str, bool] = {}
                        changes += evaluate(
                            profile,
                            view,
                            segments,
                            today,
                            tz,
                            reason=reason,
                            at_us=at,
                            caused_by=caused_by,
                            answers=answers,
                        )
                        # A backfill moves only its own segment's wake-up instant.
                        moved = affected if only is None else [only]
                        wake, wake_segment = self._next_wake(
                            profile, view, tenant.active, moved, today, tz, answers
                        )
                    outbox = pending_outbox + [c.payload() for c in changes]
                    needs_write = (
                        changed
                        or bool(changes)
                        or wake != profile.next_wake_us
                        or len(profile.membership) != membership_before
                    )
                    if needs_write:
                        profile.next_wake_us = wake
                        profile.next_wake_segment = wake_segment
                        profile.version = stored_version + 1
                        raw = encode_outbox(outbox)
                        writes.append(
                            ContactWrite(ref, profile, raw, is_new=stored_version == 0)
                        )
                        # Due at once while the outbox waits for Kafka (see above).
                        wake_version = 2 * profile.version + (0 if outbox else 1)
                        wakeups.append((ref, wake_version, now if outbox else wake))
                        attempt_changes[ref] = changes
                    else:
                        raw = loaded.outboxes.get(ref, b"")
                        if reason == "clock" and not outbox:
                            # A sweep consumed this wake-up: file the true next one.
                            wakeups.append((ref, 2 * stored_version + 1, wake))
                    settled[ref] = (profile, raw)
                    if outbox:
                        staged[ref] = _Staged(profile.version, outbox, raw, wake)
            except BaseException:
                # Chunks already sent finish on their own; wait for them so
                # that none is left running when the caller retries.
                await stream.abandon()
                raise

            # 3. The rest of the compare-and-set; the losers go round again
            #    with fresh state.
            t2 = time.perf_counter()
            with self.metrics.redis_seconds.labels("write").time():
                conflicts = await stream.finish()
            t3 = time.perf_counter()
            outcome.written += len(writes) - len(conflicts)
            outcome.conflicts += len(conflicts)
            self._count_applied(applied, duplicates, conflicts, outcome)
            for ref, changes in attempt_changes.items():
                if ref not in conflicts:
                    outcome.changes += changes
            for ref in conflicts:
                staged.pop(ref, None)
            for ref, (profile, raw) in settled.items():
                if ref not in conflicts and ref in keep:
                    self.profiles.put(ref, profile, raw)
            if not conflicts:
                break
            logger.debug("%d contacts lost a write race; retrying", len(conflicts))
            pending = list(conflicts)
            work = {ref: work[ref] for ref in pending}
        else:
            raise StoreError(
                f"{len(pending)} contacts kept losing write races; batch retried"
            )

        logger.debug(
            "Updated %d contacts: load %.1f ms, compute %.1f ms (writes sent "
            "meanwhile), last writes %.1f ms",
            len(work),
            (t1 - t0) * 1000,
            (t2 - t1) * 1000,
            (t3 - t2) * 1000,
        )
        return outcome, staged

    def _count_applied(
        self,
        applied: Mapping[ContactRef, list[str]],
        duplicates: Mapping[ContactRef, int],
        conflicts: set[ContactRef],
        outcome: Outcome,
    ) -> None:
        """Count what a successful write made permanent (losers count later)."""
        m = self.metrics
        by_label: dict[tuple[str, str], int] = defaultdict(int)
        for ref, types in applied.items():
            if ref in conflicts:
                continue
            outcome.applied += len(types)
            for kind in types:
                by_label[ref.tenant_id, kind] += 1
        for (tenant_id, kind), n in by_label.items():
            m.events_applied.labels(tenant_id, kind).inc(n)
        settled = sum(n for ref, n in duplicates.items() if ref not in conflicts)
        outcome.duplicates += settled
        m.duplicates.inc(settled)
        m.write_conflicts.inc(len(conflicts))

    @staticmethod
    def _walk_boundaries(
        profile: Profile,
        view: ContactView,
        active: Sequence[Segment],
        now: int,
        tz: ZoneInfo,
    ) -> tuple[list[Change], int | None, str | None]:
        """Clock changes at every boundary passed since the last evaluation.

        The contact is evaluated at its wake-up instant, then at the next one,
        and so on up to "now", so a clock that jumps over several boundaries
        (a worker down for a day, the test clock moved a week) still publishes
        every change, in order, each with the instant it happened as ``at``.
        """
        changes: list[Change] = []
        point = profile.next_wake_us
        if point is None or point > now:
            point = now
        wake: int | None = None
        which: str | None = None
        for _boundary in range(MAX_BOUNDARIES):
            day = local_date_us(point, tz)
            answers: dict[str, bool] = {}
            changes += evaluate(
                profile,
                view,
                active,
                day,
                tz,
                reason="clock",
                at_us=point,
                caused_by=None,
                answers=answers,
            )
            wake, which = next_wake(view, active, day, tz, answers)
            if wake is None or wake > now:
                break
            point = wake
        return changes, wake, which

    @staticmethod
    def _affected(
        profile: Profile,
        stored_version: int,
        active: Sequence[Segment],
        now: int,
        reason: Reason,
    ) -> list[Segment] | None:
        """The segments whose rules read what the events changed; None for all.

        An answer is a function of the fields its rule reads and of "today",
        so for a known contact, events that changed none of those fields,
        before the instant its wake-up names, change nothing (an empty list).
        All are evaluated for anything but events, for a new contact ("is_not"
        and friends are true on unset fields), and once a wake-up instant has
        passed (time alone may have changed any answer).
        """
        if reason != "event" or stored_version == 0:
            return None
        if profile.next_wake_us is not None and profile.next_wake_us <= now:
            return None
        touched = profile.touched
        return [s for s in active if not s.fields.isdisjoint(touched)]

    @staticmethod
    def _next_wake(
        profile: Profile,
        view: ContactView,
        active: Sequence[Segment],
        affected: list[Segment] | None,
        today: date,
        tz: ZoneInfo,
        answers: Mapping[str, bool],
    ) -> tuple[int | None, str | None]:
        """The next wake-up, recomputing only what the events can have moved.

        The stored wake-up is the minimum over all segments; if the segment
        that set it is unaffected it still holds, and the minimum with the
        affected segments' new instants is the new one. ``answers`` are the
        answers on ``today`` of the segments just evaluated.
        """
        ids = {s.id for s in affected} if affected is not None else None
        if ids is None or profile.next_wake_segment in ids:
            return next_wake(view, active, today, tz, answers)
        # Only a change on a day that starts before the stored wake-up moves
        # it: the affected segments are looked at that far and no further.
        stored = profile.next_wake_us
        until = None if stored is None else _last_day_before(stored, tz)
        wake, which = next_wake(view, affected or (), today, tz, answers, until)
        if stored is not None and (wake is None or stored <= wake):
            return stored, profile.next_wake_segment
        return wake, which

    async def _publish_and_finish(
        self, staged: Mapping[ContactRef, _Staged], outcome: Outcome
    ) -> None:
        records = [item for s in staged.values() for item in s.outbox]
        if records:
            await self._publish(records, outcome)
        await self._finish(staged)

    async def _publish(self, records: list[dict[str, Any]], outcome: Outcome) -> None:
        await self.sink.publish_membership(records)
        outcome.published = len(records)
        for item in records:
            self.metrics.membership_changes.labels(item["reason"]).inc()

    async def _finish(self, staged: Mapping[ContactRef, _Staged]) -> None:
        finished = []
        for ref, s in staged.items():
            last: dict[str, str] = {}
            for item in s.outbox:
                last[item["segment_id"]] = item["change"]
            finished.append(
                Finished(
                    ref=ref,
                    version=s.version,
                    outbox=s.raw_outbox,
                    wake_us=s.wake_us,
                    entered=[k for k, v in last.items() if v == "entered"],
                    exited=[k for k, v in last.items() if v == "exited"],
                )
            )
        with self.metrics.redis_seconds.labels("finish").time():
            cleared = await self.store.finish(finished)
        for ref in staged:
            if ref in cleared:
                self.profiles.cleared_outbox(ref)
            else:
                # Another writer took these records over: this copy is old.
                self.profiles.discard((ref,))
