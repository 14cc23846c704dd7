"""Profiles in Redis: batched reads, compare-and-set writes, wake-ups.

The update path, per batch of contacts (see ``docs/design.md``):

1. ``load``: one round trip reads every profile and pending outbox of the
   batch (``MGET``) plus the definitions epoch and the manual clock.
2. The caller folds events and evaluates segments in Python.
3. ``write``: one round trip sends the compare-and-set script, one call for
   up to ``SCRIPT_BATCH`` contacts. For each contact the script checks the
   stored version and writes the profile and the contact's outbox together,
   so a change of membership is never stored without the record of it that
   still has to reach Kafka. A version mismatch means another writer (a
   backfill, a worker taking over after a rebalance) won: the caller re-reads
   that contact and tries again, never overwriting newer state. Wake-ups are
   written in the same round trip, one script call for every shard.
4. ``finish``: after Kafka acknowledged the membership records, one round
   trip indexes the members and clears the outboxes still holding what was
   published (one script, atomic per contact) and moves the wake-ups on.

Batching many contacts into one script call is what keeps the client's cost
per event low (redis-py spends several microseconds on every reply). It
assumes one Redis server: on a Redis Cluster a script may only touch keys of
one hash slot, so the calls (and the ``MGET`` reads) would have to be split
per slot; the key layout allows that, the store does not do it.

Wake-ups carry the profile version that produced them (doubled, plus one once
the outbox is clear), and ``wake_set`` applies an update only when its version
is not older than the stored one. So a slow writer can never put back a stale
wake-up over a newer one, and the wake-up set is never later than the truth.

redis-py raises its own errors; they become ``StoreError`` here, marked
retriable. Scripts are called by SHA without redis-py's per-pipeline
``SCRIPT EXISTS`` round trip; after a Redis restart (``NOSCRIPT``) they are
loaded again and the caller retries.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import (
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar
from zoneinfo import ZoneInfo

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from signals.errors import StoreError
from signals.keys import WAKE_SHARDS, ContactRef, Keys, text
from signals.profile import Profile, stored_view
from signals.view import ContactView

logger = logging.getLogger(__name__)

# KEYS: profile and outbox of each contact, in pairs; ARGV: expected stored
# version, new profile, new outbox ('' clears it), in triples. Returns 1 per
# contact written, 0 per contact whose stored version was not the expected one.
_CAS = """
local written = {}
for i = 1, #KEYS, 2 do
  local a = (i - 1) / 2 * 3
  local current = redis.call('GET', KEYS[i])
  local version = 0
  if current then version = tonumber(string.match(current, '^(%d+)|')) end
  if version == tonumber(ARGV[a + 1]) then
    redis.call('SET', KEYS[i], ARGV[a + 2])
    if ARGV[a + 3] == '' then redis.call('DEL', KEYS[i + 1])
    else redis.call('SET', KEYS[i + 1], ARGV[a + 3]) end
    written[#written + 1] = 1
  else
    written[#written + 1] = 0
  end
end
return written
"""

# KEYS: per contact, its outbox, the member sets it entered, those it exited.
# ARGV: per contact, the outbox value it must still hold, the contact id, and
# how many sets it entered and exited. Only a contact whose outbox is still
# the one published is indexed and cleared, both at once. Returns 1 per
# contact cleared, 0 per contact whose outbox another writer has replaced.
_FINISH = """
local k, cleared = 1, {}
for a = 1, #ARGV, 4 do
  local entered, exited = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  if redis.call('GET', KEYS[k]) == ARGV[a] then
    for i = 1, entered do redis.call('SADD', KEYS[k + i], ARGV[a + 1]) end
    for i = 1, exited do redis.call('SREM', KEYS[k + entered + i], ARGV[a + 1]) end
    redis.call('DEL', KEYS[k])
    cleared[#cleared + 1] = 1
  else
    cleared[#cleared + 1] = 0
  end
  k = k + 1 + entered + exited
end
return cleared
"""

# KEYS: per shard, its wake-up zset and versions hash. ARGV: per shard, the
# number of its updates, then each update as member, version, score ('' score
# removes the wake-up). One call for every shard of a write: a call per shard
# had been most of the commands the worker sent and a reply for redis-py to
# read each (about 20 us apiece).
_WAKE_SET = """
local applied, a = 0, 1
for k = 1, #KEYS, 2 do
  local zset, versions = KEYS[k], KEYS[k + 1]
  local last = a + 3 * tonumber(ARGV[a])
  for i = a + 1, last, 3 do
    local member, version, score = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
    local stored = tonumber(redis.call('HGET', versions, member) or '-1')
    if version >= stored then
      if score == '' then
        redis.call('ZREM', zset, member)
        redis.call('HDEL', versions, member)
      else
        redis.call('ZADD', zset, score, member)
        redis.call('HSET', versions, member, version)
      end
      applied = applied + 1
    end
  end
  a = last + 1
end
return applied
"""

_SET_MAX = """
local stored = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > stored then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""

# KEYS: a hash; ARGV: field, value pairs. Raises each field to its value.
_HASH_MAX = """
for i = 1, #ARGV, 2 do
  local stored = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '-1')
  if tonumber(ARGV[i + 1]) > stored then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 1
"""

_SET_CLOCK = """
local stored = redis.call('GET', KEYS[1])
if tonumber(ARGV[1]) >= tonumber(stored or '0') then
  redis.call('SET', KEYS[1], ARGV[1])
  return ARGV[1]
end
return stored
"""


#: Contacts per script call of a batched write or finish: one call stays a
#: few milliseconds of Redis time, so other clients are not held up long.
SCRIPT_BATCH = 500

_T = TypeVar("_T")


def _chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _per_contact(results: list[Any], calls: int) -> list[Any]:
    """The per-contact replies of the first ``calls`` batched script calls."""
    return [reply for call in results[:calls] for reply in call]


class Loaded(NamedTuple):
    profiles: dict[ContactRef, Profile]
    outboxes: dict[ContactRef, bytes]
    epoch: int
    clock_us: int | None


@dataclass(slots=True)
class ContactWrite:
    """One compare-and-set of a profile (``profile.version`` is the new one)."""

    ref: ContactRef
    profile: Profile
    outbox: bytes
    is_new: bool


@dataclass(slots=True)
class Finished:
    """A contact whose outbox reached Kafka: what to clear and index."""

    ref: ContactRef
    version: int
    outbox: bytes
    wake_us: int | None
    entered: Sequence[str]
    exited: Sequence[str]


def _translate(exc: Exception) -> StoreError:
    return StoreError(f"Redis call failed: {exc.__class__.__name__}: {exc}")


class Store:
    """All reads and writes of profiles; one instance per worker."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._sources = {
            "cas": _CAS,
            "finish": _FINISH,
            "wake": _WAKE_SET,
            "clock": _SET_CLOCK,
            "max": _SET_MAX,
            "hmax": _HASH_MAX,
        }
        self._sha: dict[str, str] = {}

    async def load_scripts(self) -> None:
        try:
            for name, source in self._sources.items():
                self._sha[name] = await self.redis.script_load(source)
        except redis_errors.RedisError as exc:
            raise _translate(exc) from exc

    async def _execute(self, pipe: Any) -> list[Any]:
        try:
            result: list[Any] = await pipe.execute()
        except redis_errors.NoScriptError as exc:
            logger.warning("Redis lost its scripts (restart?); loading them again")
            await self.load_scripts()
            raise _translate(exc) from exc
        except redis_errors.RedisError as exc:
            raise _translate(exc) from exc
        return result

    # -- profiles ----------------------------------------------------------------

    async def _read(
        self, refs: Sequence[ContactRef]
    ) -> tuple[list[bytes | None], int, int | None]:
        """One round trip: the stored profiles of ``refs``, then their outboxes
        (one list, in the order of ``refs`` twice), the epoch and the clock."""
        keys = [self.keys.contact(r) for r in refs] + [
            self.keys.outbox(r) for r in refs
        ]
        pipe = self.redis.pipeline(transaction=False)
        if keys:
            pipe.mget(keys)
        pipe.get(self.keys.epoch)
        pipe.get(self.keys.clock)
        results = await self._execute(pipe)
        values: list[bytes | None] = results[0] if keys else []
        epoch = int(results[-2] or 0)
        clock = int(results[-1]) if results[-1] is not None else None
        return values, epoch, clock

    async def load(self, refs: Sequence[ContactRef]) -> Loaded:
        """Profiles and outboxes of ``refs``, the epoch and the manual clock."""
        values, epoch, clock = await self._read(refs)
        profiles: dict[ContactRef, Profile] = {}
        outboxes: dict[ContactRef, bytes] = {}
        for i, ref in enumerate(refs):
            raw = values[i]
            if raw is None:
                profiles[ref] = Profile()
            else:
                head, _, body = raw.partition(b"|")
                profiles[ref] = Profile.decode(body, int(head))
            pending = values[len(refs) + i]
            if pending:
                outboxes[ref] = pending
        return Loaded(profiles, outboxes, epoch, clock)

    async def views(
        self, refs: Sequence[ContactRef], tz: ZoneInfo
    ) -> list[ContactView]:
        """Read-only views of ``refs`` (one tenant's, in its zone ``tz``), in
        the order of ``refs``.

        For walks that evaluate and never write (preview, snapshot): one MGET
        of the profiles alone, each read without building its ``Profile``.
        """
        if not refs:
            return []
        pipe = self.redis.pipeline(transaction=False)
        pipe.mget([self.keys.contact(r) for r in refs])
        values: list[bytes | None] = (await self._execute(pipe))[0]
        views: list[ContactView] = []
        for ref, raw in zip(refs, values, strict=True):
            if raw is None:
                views.append(Profile().view(ref.tenant_id, ref.contact_id, tz))
            else:
                body = raw[raw.index(b"|") + 1 :]
                views.append(stored_view(body, ref.tenant_id, ref.contact_id, tz))
        return views

    async def documents(
        self, refs: Sequence[ContactRef]
    ) -> tuple[dict[ContactRef, tuple[int, bytes]], set[ContactRef], int, int | None]:
        """The stored documents of ``refs``, undecoded, for a read-only look.

        One round trip, as ``load``: the profiles, the outboxes, the epoch and
        the manual clock. Returns each existing profile's version and document
        (``stored_state`` reads it), the contacts with an outbox still to
        publish, the epoch and the manual clock.
        """
        values, epoch, clock = await self._read(refs)
        documents: dict[ContactRef, tuple[int, bytes]] = {}
        pending: set[ContactRef] = set()
        for i, ref in enumerate(refs):
            raw = values[i]
            if raw is not None:
                head, _, body = raw.partition(b"|")
                documents[ref] = (int(head), body)
            if values[len(refs) + i]:
                pending.add(ref)
        return documents, pending, epoch, clock

    async def write(
        self,
        writes: Sequence[ContactWrite],
        wakeups: Iterable[tuple[ContactRef, int, int | None]],
    ) -> set[ContactRef]:
        """Compare-and-set every write; returns the contacts that lost a race.

        ``wakeups`` are ``(ref, wake_version, instant_us or None)``; the caller
        passes only those of writes, and ``wake_set`` ignores any whose write
        lost (its version is older than the winner's).
        """
        pipe = self.redis.pipeline(transaction=False)

        def cas(w: ContactWrite) -> tuple[list[str], list[Any]]:
            body = b"%d|" % w.profile.version + w.profile.encode()
            keys = [self.keys.contact(w.ref), self.keys.outbox(w.ref)]
            return keys, [w.profile.version - 1, body, w.outbox]

        calls = self._queue_per_contact(pipe, "cas", writes, cas)
        new_by_tenant: dict[str, list[str]] = defaultdict(list)
        for w in writes:
            if w.is_new:
                new_by_tenant[w.ref.tenant_id].append(w.ref.contact_id)
        for tenant, contacts in new_by_tenant.items():
            pipe.sadd(self.keys.tenant_contacts(tenant), *contacts)
        self._queue_wakeups(pipe, wakeups)
        written = _per_contact(await self._execute(pipe), calls)
        return {w.ref for w, ok in zip(writes, written, strict=True) if not ok}

    async def finish(self, done: Sequence[Finished]) -> set[ContactRef]:
        """Index members and clear outboxes that reached Kafka; move wake-ups on.

        One round trip. A contact whose outbox is no longer the one published
        was taken over by a later writer, which holds these records in its
        own outbox and will index the final state itself, so the index never
        goes backwards; its wake-up update is older than that writer's and
        ``wake_set`` ignores it. Returns the contacts cleared.
        """
        if not done:
            return set()
        pipe = self.redis.pipeline(transaction=False)

        def finish(f: Finished) -> tuple[list[str], list[Any]]:
            tenant = f.ref.tenant_id
            keys = [self.keys.outbox(f.ref)]
            keys += (self.keys.members(tenant, s) for s in f.entered)
            keys += (self.keys.members(tenant, s) for s in f.exited)
            return keys, [f.outbox, f.ref.contact_id, len(f.entered), len(f.exited)]

        calls = self._queue_per_contact(pipe, "finish", done, finish)
        self._queue_wakeups(pipe, ((f.ref, 2 * f.version + 1, f.wake_us) for f in done))
        cleared = _per_contact(await self._execute(pipe), calls)
        return {f.ref for f, ok in zip(done, cleared, strict=True) if ok}

    def _queue_per_contact(
        self,
        pipe: Any,
        script: str,
        items: Sequence[_T],
        keys_and_args: Callable[[_T], tuple[list[str], list[Any]]],
    ) -> int:
        """Queue ``script`` once per ``SCRIPT_BATCH`` items, each item's keys
        and arguments in turn; returns how many calls were queued (first in
        the pipeline, so ``_per_contact`` finds their replies)."""
        calls = 0
        for chunk in _chunks(items, SCRIPT_BATCH):
            keys: list[str] = []
            args: list[Any] = []
            for item in chunk:
                more_keys, more_args = keys_and_args(item)
                keys += more_keys
                args += more_args
            pipe.evalsha(self._sha[script], len(keys), *keys, *args)
            calls += 1
        return calls

    # -- progress of long walks ------------------------------------------------------

    async def set_progress(
        self, tenant_id: str, segment_id: str, done: int, total: int
    ) -> None:
        await self.redis.hset(
            self.keys.tenant_progress(tenant_id), segment_id, f"{done}/{total}"
        )

    async def clear_progress(self, tenant_id: str, segment_id: str) -> None:
        await self.redis.hdel(self.keys.tenant_progress(tenant_id), segment_id)

    async def progress(self, tenant_id: str) -> dict[str, dict[str, int]]:
        """Segment id -> {"done", "total"} of the walks running now."""
        raw = await self.redis.hgetall(self.keys.tenant_progress(tenant_id))
        out = {}
        for key, value in raw.items():
            done, _, total = text(value).partition("/")
            out[text(key)] = {"done": int(done), "total": int(total)}
        return out

    # -- dead letters ------------------------------------------------------------

    async def deadletter_marks(
        self, partitions: Sequence[tuple[str, int]]
    ) -> list[tuple[int, dict[int, int]]]:
        """Per input partition, the highest offset already dead-lettered (-1)
        and the positions in the dead-letter topic where letters beyond that
        mark can start (per dead-letter partition; empty: none recorded)."""
        pipe = self.redis.pipeline(transaction=False)
        for topic, partition in partitions:
            pipe.get(self.keys.deadletter_mark(topic, partition))
            pipe.hgetall(self.keys.deadletter_positions(topic, partition))
        results = await self._execute(pipe)
        out = []
        for mark, positions in zip(results[::2], results[1::2], strict=True):
            offset = int(mark) if mark is not None else -1
            out.append((offset, {int(k): int(v) for k, v in positions.items()}))
        return out

    async def set_deadletter_marks(
        self,
        marks: Mapping[tuple[str, int], int],
        positions: Mapping[tuple[str, int], Mapping[int, int]],
    ) -> None:
        """Raise input partitions' marks and their dead-letter positions."""
        pipe = self.redis.pipeline(transaction=False)
        for (topic, partition), offset in marks.items():
            pipe.evalsha(
                self._sha["max"], 1, self.keys.deadletter_mark(topic, partition), offset
            )
        for (topic, partition), where in positions.items():
            if where:
                pairs = [x for item in sorted(where.items()) for x in item]
                key = self.keys.deadletter_positions(topic, partition)
                pipe.evalsha(self._sha["hmax"], 1, key, *pairs)
        await self._execute(pipe)

    def _queue_wakeups(
        self, pipe: Any, wakeups: Iterable[tuple[ContactRef, int, int | None]]
    ) -> None:
        by_shard: dict[int, list[Any]] = defaultdict(list)
        for ref, version, instant in wakeups:
            by_shard[self.keys.wake_shard(ref)] += [
                ref.member,
                version,
                "" if instant is None else instant,
            ]
        if not by_shard:
            return
        keys: list[str] = []
        args: list[Any] = []
        for shard, updates in by_shard.items():
            keys += (self.keys.wakeups(shard), self.keys.wake_versions(shard))
            args.append(len(updates) // 3)
            args += updates
        pipe.evalsha(self._sha["wake"], len(keys), *keys, *args)

    async def due(
        self, shard: int, now_us: int, limit: int
    ) -> list[tuple[ContactRef, int]]:
        """Contacts of one shard whose wake-up instant has come."""
        try:
            rows = await self.redis.zrangebyscore(
                self.keys.wakeups(shard),
                "-inf",
                now_us,
                start=0,
                num=limit,
                withscores=True,
            )
        except redis_errors.RedisError as exc:
            raise _translate(exc) from exc
        return [
            (ContactRef.from_member(text(row[0])), int(row[1]))
            for row in rows
            if isinstance(row, tuple | list)
        ]

    async def due_count(self, now_us: int) -> int:
        """How many wake-ups are due at ``now_us``, over every shard."""
        return sum(await self.due_by_shard(now_us))

    async def due_by_shard(self, now_us: int) -> list[int]:
        """Per shard, how many wake-ups are due at ``now_us`` (one round trip)."""
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(WAKE_SHARDS):
            pipe.zcount(self.keys.wakeups(shard), "-inf", now_us)
        return [int(n) for n in await self._execute(pipe)]

    async def contact_ids(self, tenant_id: str, chunk: int) -> AsyncIterator[list[str]]:
        """Every contact id of a tenant, in chunks (SSCAN: no long blocking)."""
        cursor = 0
        while True:
            try:
                cursor, ids = await self.redis.sscan(
                    self.keys.tenant_contacts(tenant_id), cursor, count=chunk
                )
            except redis_errors.RedisError as exc:
                raise _translate(exc) from exc
            if ids:
                yield [text(i) for i in ids]
            if cursor == 0:
                return

    async def contact_count(self, tenant_id: str) -> int:
        return int(await self.redis.scard(self.keys.tenant_contacts(tenant_id)))

    # -- manual clock ------------------------------------------------------------

    async def set_clock(self, instant_us: int) -> int:
        """Move the manual clock forward; returns the clock after the call."""
        try:
            value = await self.redis.evalsha(
                self._sha["clock"], 1, self.keys.clock, instant_us
            )
        except redis_errors.RedisError as exc:
            raise _translate(exc) from exc
        return int(value)

    async def get_clock(self) -> int | None:
        value = await self.redis.get(self.keys.clock)
        return None if value is None else int(value)
