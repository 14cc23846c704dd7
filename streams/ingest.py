"""The hot path: a batched consumer of the six input topics.

Why not a faust agent: faust's per-event path caps a worker near 10k events/s
(a no-op agent measured here), its tables cannot be written inside
``stream.take()`` batches, it acks an event whose handler raised, and with
agent concurrency above 1 it commits offsets past work still in flight. This
loop keeps faust as the application (lifecycle, leader election, timers, the
HTTP server) and consumes with aiokafka directly:

1. ``getmany`` a batch from every assigned partition.
2. Validate every record; the invalid ones go to the dead-letter topic with
   their original bytes and a readable reason, and Kafka acknowledges them
   before anything else happens, so none is lost and none stops the batch.
3. Apply the valid events through ``Engine.apply_events`` (one read and one
   write round trip for the whole batch; see ``streams.engine``). Redis or
   Kafka being away is retried until it comes back; nothing is skipped. The
   batch's membership records are published, and its outboxes cleared,
   while the next batch is fetched and applied (one such delivery at a time).
4. Commit, per partition, the offset after the last record of the batch once
   its delivery is done, while the next batch is fetched and processed.
   Commits stay in order, one in flight, at most one per
   ``COMMIT_INTERVAL_SECONDS``: the batches applied meanwhile go in the next
   commit together (small batches at a modest rate would otherwise send a
   commit every few milliseconds, each costing the worker and the broker more
   than the batch's own Kafka reads). A rebalance or a stop commits what is
   applied at once and waits for it.

Offsets are committed only in step 4, after every effect of the batch is
durable in Redis and acknowledged by Kafka, so a crash anywhere replays the
batch; deduplication by ``event_id`` and the outbox make the replay change
nothing and re-publish the same membership records. A rebalance waits for the
batch in flight and its delivery (the revoke callback takes the same lock and
then commits), so a partition is never handed over with applied but
uncommitted work. A worker that lost its partitions while paused finds its
commit refused and its writes rejected by compare-and-set, so it cannot undo
newer work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from schemas.events import Event, parse_event
from signals.errors import InvalidEventError
from signals.keys import ContactRef
from signals.windows import US, rfc3339, to_us
from streams.collector import Collector
from streams.engine import Engine, Outcome
from streams.kafka import DeadLetter, Publisher, input_topics
from streams.metrics import observe_many
from streams.retry import RetryPolicy
from streams.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class BatchStats:
    records: int = 0
    dead_letters: int = 0
    outcome: Outcome | None = None
    #: The batch's delivery, still running when ``process`` returns; None
    #: when nothing is left to deliver.
    delivery: asyncio.Task[None] | None = None


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # Wait for the batch in flight: it commits before the hand-over.
        async with self.ingest.batch_lock:
            await self.ingest.committed()
            # Contacts may move to another worker and back: forget them.
            self.ingest.engine.profiles.clear()
            if revoked:
                logger.info("Partitions revoked: %s", _describe(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        logger.info("Partitions assigned: %s", _describe(assigned) or "none")
        self.ingest.assigned = set(assigned)
        self.ingest.joined = True
        # Another worker may have dead-lettered for these partitions and
        # crashed before marking: look again before dead-lettering here.
        self.ingest.letters_checked.clear()


def _failed(task: asyncio.Task[None]) -> bool:
    return not task.cancelled() and task.exception() is not None


def _describe(partitions: set[TopicPartition]) -> str:
    by_topic: dict[str, list[int]] = defaultdict(list)
    for tp in partitions:
        by_topic[tp.topic].append(tp.partition)
    return "; ".join(f"{t} {sorted(p)}" for t, p in sorted(by_topic.items()))


class Ingest:
    """Consumes, validates, applies and commits, one batch at a time."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        publisher: Publisher,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.publisher = publisher
        self.retry = retry or RetryPolicy()
        self.batch_lock = asyncio.Lock()
        self.assigned: set[TopicPartition] = set()
        #: True once the group gave this worker an assignment (maybe empty:
        #: more workers than partitions leaves some idle, and that is fine).
        self.joined = False
        self.skew_us = int(settings.max_clock_skew_seconds * US)
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping = False
        self._commit_task: asyncio.Task[None] | None = None
        #: Offsets applied and not yet handed to a commit, per partition.
        self._uncommitted: dict[TopicPartition, int] = {}
        #: Set while someone waits for everything applied to be committed.
        self._commit_now = asyncio.Event()
        self._last_commit = 0.0
        #: Marks the last batch's offsets applied once its delivery is done;
        #: each waits for the one before, so offsets are marked in order.
        self._marking: asyncio.Task[None] | None = None
        #: Runs Python's cyclic garbage collector between batches; the worker
        #: process starts it (``streams.cli``), tests and tools leave it be.
        self.collector = Collector()
        #: Mark keys whose dead letters were looked up in the topic since the
        #: last assignment (see ``_dead_letter``).
        self.letters_checked: set[tuple[str, int]] = set()

    @property
    def consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("Ingest.start() was not awaited")
        return self._consumer

    @property
    def running(self) -> bool:
        return self._consumer is not None and not self._stopping

    async def start(self) -> None:
        settings = self.settings
        # aiokafka binds its clients to the running loop: create them here.
        self._consumer = AIOKafkaConsumer(
            **settings.kafka_client_options(),
            group_id=settings.consumer_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=settings.batch_max_records,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            partition_assignment_strategy=(RangePartitionAssignor,),
            session_timeout_ms=int(settings.kafka_session_timeout_seconds * 1000),
            heartbeat_interval_ms=int(
                settings.kafka_session_timeout_seconds * 1000 / 3
            ),
        )
        topics = input_topics(self.settings)
        self.consumer.subscribe(topics, listener=_Rebalance(self))
        await self.consumer.start()
        logger.info(
            "Consuming %s as group %s", ", ".join(topics), self.settings.consumer_group
        )

    async def stop(self) -> None:
        self._stopping = True
        async with self.batch_lock:
            await self.committed()
            if self._consumer is not None:
                await self._consumer.stop()

    async def run(self) -> None:
        while not self._stopping:
            self.collector.tick()
            batch = await self.consumer.getmany(
                timeout_ms=200, max_records=self.settings.batch_max_records
            )
            if not batch:
                continue
            async with self.batch_lock:
                if self._stopping:
                    return
                stats = await self.process(batch)
                offsets = {
                    tp: records[-1].offset + 1
                    for tp, records in batch.items()
                    if records
                }
                # The records die here, before the collector runs: it walks
                # whatever is alive and young.
                del batch
                self._marking = asyncio.create_task(
                    self._mark_when_delivered(stats.delivery, offsets, self._marking)
                )
                if self._commit_task is not None and self._commit_task.done():
                    self._commit_task.result()  # an unexpected failure stops here
            self.collector.after_batch()

    async def _mark_when_delivered(
        self,
        delivery: asyncio.Task[None] | None,
        offsets: dict[TopicPartition, int],
        previous: asyncio.Task[None] | None,
    ) -> None:
        """Hand a batch's offsets to the commits once it is delivered."""
        if previous is not None:
            await previous
        if delivery is not None:
            await asyncio.shield(delivery)
        for tp, offset in offsets.items():
            self._uncommitted[tp] = max(self._uncommitted.get(tp, 0), offset)
        # The commit runs while the next batches are fetched and processed;
        # commits stay in order, one in flight at a time.
        task = self._commit_task
        if task is not None and (not task.done() or _failed(task)):
            return  # running (it takes these too), or failed: ``run`` raises it
        self._commit_task = asyncio.create_task(self._commit_applied())

    async def committed(self) -> None:
        """Commit every offset applied so far, now, and wait for Kafka.

        Batches still being delivered are waited for first."""
        self._commit_now.set()
        try:
            marking = self._marking
            if marking is not None:
                await asyncio.shield(marking)
                if self._marking is marking:
                    self._marking = None
            while self._commit_task is not None or self._uncommitted:
                task = self._commit_task
                if task is None:
                    task = asyncio.create_task(self._commit_applied())
                    self._commit_task = task
                try:
                    await task
                finally:
                    if self._commit_task is task:
                        self._commit_task = None
        finally:
            self._commit_now.clear()

    async def _commit_applied(self) -> None:
        """Commit what is applied, no sooner than the interval allows, until
        nothing is left; the offsets of batches applied during a commit go in
        the next one."""
        interval = self.settings.commit_interval_seconds
        while self._uncommitted:
            wait = self._last_commit + interval - time.monotonic()
            if wait > 0 and not self._commit_now.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._commit_now.wait(), wait)
            offsets, self._uncommitted = self._uncommitted, {}
            self._last_commit = time.monotonic()
            await self._commit(offsets)

    async def process(self, batch: dict[TopicPartition, list[Any]]) -> BatchStats:
        """Steps 1-3 of the module docstring for one ``getmany`` result.

        Returns with the batch's delivery running (``BatchStats.delivery``).
        """
        stats = BatchStats()
        started = time.perf_counter()

        # 2. Validate; the future-skew check needs "now" (maybe the test clock).
        now = await self.retry.call("reading the clock", self.engine.now_us)
        work: dict[ContactRef, list[Event]] = defaultdict(list)
        # Where each contact's events came from, should they be dead-lettered.
        origins: dict[ContactRef, list[tuple[TopicPartition, Any]]] = defaultdict(list)
        letters: list[DeadLetter] = []
        for tp, records in batch.items():
            for rec in records:
                stats.records += 1
                try:
                    event = self._validate(rec.value, now)
                except InvalidEventError as exc:
                    letters.append(DeadLetter.of(tp, rec, exc.reason, exc.kind))
                    continue
                ref = ContactRef(event.tenant_id, event.contact_id)
                work[ref].append(event)
                origins[ref].append((tp, rec))
        if letters:
            stats.dead_letters = await self.retry.call(
                "publishing dead letters", lambda: self._dead_letter(letters)
            )

        # 3. Apply. A failure that retrying cannot fix is isolated per contact.
        if work:
            stats.outcome, stats.delivery = await self._apply(work, origins)
        metrics = self.engine.metrics
        metrics.batch_seconds.observe(time.perf_counter() - started)
        done_ms = time.time() * 1000
        observe_many(
            metrics.event_age_seconds,
            [
                max(0.0, done_ms - rec.timestamp) / 1000
                for records in batch.values()
                for rec in records
            ],
        )
        logger.debug(
            "Batch of %d records in %.1f ms",
            stats.records,
            (time.perf_counter() - started) * 1000,
        )
        return stats

    async def _dead_letter(self, letters: list[DeadLetter]) -> int:
        """Publish dead letters once, even when their batch is replayed.

        Each input partition keeps a mark, the highest offset whose dead
        letter Kafka acknowledged (one mark for invalid records, one for
        processing failures); a replayed batch (after a crash, a rebalance, a
        group reset) skips what is at or below it. The mark is raised after
        Kafka's acknowledgement, so a crash in between leaves letters in the
        topic beyond their mark. Each mark therefore also keeps positions in
        the dead-letter topic before which none of its unmarked letters can
        be (read from the topic's end before its first letter, then moved on
        past each letter published). The first time a partition dead-letters
        after an assignment, the topic is read from those positions to its
        end, and letters already there are marked, not published again.
        """

        store = self.engine.store
        keys = sorted({d.mark for d in letters})
        stored = dict(zip(keys, await store.deadletter_marks(keys), strict=True))
        unplaced = [key for key in keys if not stored[key][1]]
        if unplaced:
            # Before a partition's first letter: nothing of it can be earlier.
            ends = await self.publisher.deadletter_ends()
            await store.set_deadletter_marks({}, dict.fromkeys(unplaced, ends))
            for key in unplaced:
                stored[key] = (stored[key][0], ends)
        published: set[tuple[tuple[str, int], int]] = set()
        unchecked = [key for key in keys if key not in self.letters_checked]
        if unchecked:
            since: dict[int, int] = {}
            for key in unchecked:
                for part, offset in stored[key][1].items():
                    since[part] = min(since.get(part, offset), offset)
            for found in await self.publisher.published_deadletters(since):
                published.add((found.mark, found.offset))
            self.letters_checked.update(unchecked)

        highest: dict[tuple[str, int], int] = {}
        fresh = []
        repeats = 0
        for d in letters:
            if d.offset <= stored[d.mark][0]:
                continue
            highest[d.mark] = max(highest.get(d.mark, -1), d.offset)
            if (d.mark, d.offset) in published:
                repeats += 1  # published before a crash, not marked yet
            else:
                fresh.append(d)
        after: dict[int, int] = {}
        if fresh:
            after = await self.publisher.publish_deadletters(fresh)
            for d in fresh:
                self.engine.metrics.dead_letters.labels(d.kind).inc()
        if highest:
            await store.set_deadletter_marks(highest, dict.fromkeys(highest, after))
        if repeats:
            logger.info(
                "%d dead letters were published before a crash and not marked; "
                "they are marked now, not published again",
                repeats,
            )
        logger.debug("%d records dead-lettered", len(fresh))
        return len(fresh)

    def _validate(self, value: bytes | None, now_us: int) -> Event:
        if value is None:
            raise InvalidEventError("empty record value (tombstone)", "schema")
        event = parse_event(value)
        if to_us(event.occurred_at) > now_us + self.skew_us:
            raise InvalidEventError(
                f"occurred_at {rfc3339(to_us(event.occurred_at))} is more than "
                f"{self.settings.max_clock_skew_seconds:g} s after now "
                f"({rfc3339(now_us)})",
                "future_time",
            )
        return event

    async def _apply(
        self,
        work: dict[ContactRef, list[Event]],
        origins: dict[ContactRef, list[tuple[TopicPartition, Any]]],
    ) -> tuple[Outcome, asyncio.Task[None] | None]:
        try:
            return await self.retry.call(
                "applying a batch", lambda: self.engine.apply_events(work)
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("A batch failed to apply; isolating the failing contacts")
        outcome = Outcome()
        for ref, events in work.items():
            try:
                one = await self.retry.call(
                    "applying one contact",
                    lambda r=ref, e=events: self.engine.update({r: e}, reason="event"),  # type: ignore[misc]
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.exception("Events of contact %s dead-lettered", ref.member)
                reason = f"processing failed: {exc!r}"
                letters = [
                    DeadLetter.of(tp, rec, reason, "processing")
                    for tp, rec in origins[ref]
                ]
                await self.retry.call(
                    "publishing dead letters",
                    lambda ls=letters: self._dead_letter(ls),  # type: ignore[misc]
                )
                continue
            outcome.applied += one.applied
            outcome.duplicates += one.duplicates
            outcome.changes += one.changes
        return outcome, None

    async def refresh_lag(self) -> None:
        """Set the consumer-lag gauge of every assigned partition (on scrape)."""
        if self._consumer is None:
            return
        gauge = self.engine.metrics.consumer_lag
        gauge.clear()
        for tp in self.assigned:
            end = self._consumer.highwater(tp)
            if end is None:
                continue
            position = await self._consumer.position(tp)
            gauge.labels(tp.topic, str(tp.partition)).set(max(0, end - position))

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # The group moved on without us (paused past the session timeout);
            # the new owner replays these records, and replaying changes nothing.
            logger.warning("Offset commit refused, partitions moved: %s", exc)
        except KafkaError as exc:
            logger.warning("Offset commit failed, batch will be replayed: %s", exc)
