"""Segment operations over a tenant's contacts: what the API and the CLI call.

Creating or editing an active segment backfills it: every contact of the
tenant goes through the engine's update path with reason ``definition``,
restricted to that segment, so only contacts whose answer differs from their
recorded one produce a change (for an edit, exactly the difference between
the old and the new membership). A static segment is evaluated once, its
members stored in their own set and published with reason ``snapshot``; its
contacts' profiles never record it, so nothing they do later can move it.

Preview, backfill and snapshot read contacts in chunks and evaluate them with
the same compiled rule the live path uses, so they cannot disagree.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from segments.evaluate import compile_rule
from segments.membership import Change
from segments.registry import Registry, Segment, SegmentNotFoundError
from segments.rules import Rule, SegmentSpec
from signals.keys import ContactRef, text
from signals.store import Store
from signals.view import ContactView
from signals.windows import local_date_us, rfc3339
from streams.engine import Engine

logger = logging.getLogger(__name__)

#: Contacts read per round trip when walking a whole tenant.
CHUNK = 2000
#: Seconds between progress lines of a long walk.
PROGRESS_EVERY = 5.0

_R = TypeVar("_R")


async def _nothing(refs: list[ContactRef]) -> None:
    """The ``read`` of a walk whose step reads for itself."""


@dataclass(slots=True)
class WalkReport:
    """What one walk over a tenant's contacts did."""

    contacts: int = 0
    entered: int = 0
    exited: int = 0
    seconds: float = 0.0
    sample: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "contacts": self.contacts,
            "entered": self.entered,
            "exited": self.exited,
            "seconds": round(self.seconds, 3),
        }


def _count(report: WalkReport, changes: list[Change]) -> None:
    for change in changes:
        if change.change == "entered":
            report.entered += 1
        else:
            report.exited += 1


class SegmentOperations:
    def __init__(self, registry: Registry, store: Store, engine: Engine) -> None:
        self.registry = registry
        self.store = store
        self.engine = engine

    async def _walk(
        self,
        tenant_id: str,
        what: str,
        read: Callable[[list[ContactRef]], Awaitable[_R]],
        step: Callable[[list[ContactRef], _R], Awaitable[None]],
        segment_id: str | None,
    ) -> WalkReport:
        """Run ``step`` over every contact of the tenant, in chunks.

        Each chunk's ``read`` starts as soon as its ids are known, so Redis
        serves it while the previous chunk's ``step`` runs; ``step`` gets the
        chunk and what its ``read`` returned. A step that must read under a
        lock (a backfill) reads in ``step`` and passes ``_nothing`` here.

        For a segment's backfill, snapshot or deletion the progress is kept in
        Redis after each chunk, where ``GET .../segments`` shows it to anyone
        (the CLI polls it while its request runs), and logged every few
        seconds.
        """
        report = WalkReport()
        started = last_log = time.perf_counter()
        total = await self.store.contact_count(tenant_id)
        ahead: tuple[list[ContactRef], asyncio.Future[_R]] | None = None

        async def run(refs: list[ContactRef], reading: asyncio.Future[_R]) -> None:
            nonlocal last_log
            await step(refs, await reading)
            report.contacts += len(refs)
            if segment_id is not None:
                await self.store.set_progress(
                    tenant_id, segment_id, report.contacts, total
                )
            if time.perf_counter() - last_log > PROGRESS_EVERY:
                last_log = time.perf_counter()
                logger.info("%s: %d of %d contacts", what, report.contacts, total)

        try:
            async for ids in self.store.contact_ids(tenant_id, CHUNK):
                refs = [ContactRef(tenant_id, c) for c in ids]
                previous, ahead = ahead, (refs, asyncio.ensure_future(read(refs)))
                if previous is not None:
                    await run(*previous)
            if ahead is not None:
                last, ahead = ahead, None
                await run(*last)
        finally:
            if ahead is not None:
                # A step failed: the read started for the next chunk is moot.
                ahead[1].cancel()
                with contextlib.suppress(BaseException):
                    await ahead[1]
            if segment_id is not None:
                await self.store.clear_progress(tenant_id, segment_id)
        report.seconds = time.perf_counter() - started
        return report

    # -- active segments ---------------------------------------------------------

    async def backfill(self, segment: Segment) -> WalkReport:
        report = WalkReport()

        async def step(refs: list[ContactRef], _: None) -> None:
            outcome = await self.engine.backfill(refs, segment)
            _count(report, outcome.changes)

        walked = await self._walk(
            segment.tenant_id, f"Backfill of {segment.id}", _nothing, step, segment.id
        )
        report.contacts, report.seconds = walked.contacts, walked.seconds
        logger.info(
            "Segment %s v%d backfilled: %d contacts, %d entered, %d exited, %.2f s",
            segment.id,
            segment.version,
            report.contacts,
            report.entered,
            report.exited,
            report.seconds,
        )
        return report

    # -- static segments ---------------------------------------------------------

    async def snapshot(self, segment: Segment) -> tuple[Segment, WalkReport]:
        now = await self.engine.now_us()
        await self.engine.cache.refresh(await self.registry.epoch())
        tenant = self.engine.cache.tenant(segment.tenant_id)
        tz = tenant.tz
        today = local_date_us(now, tz)
        members_key = self.store.keys.members(segment.tenant_id, segment.id)
        report = WalkReport()

        async def step(refs: list[ContactRef], views: list[ContactView]) -> None:
            matches = segment.compiled.matches
            members = [
                r for r, v in zip(refs, views, strict=True) if matches(v, today, tz)
            ]
            if not members:
                return
            await self.store.redis.sadd(members_key, *[r.contact_id for r in members])
            await self.engine.sink.publish_membership(
                [
                    Change(
                        r,
                        segment.id,
                        segment.version,
                        "entered",
                        "snapshot",
                        now,
                        None,
                        1,
                    ).payload()
                    for r in members
                ]
            )
            report.entered += len(members)

        walked = await self._walk(
            segment.tenant_id,
            f"Snapshot of {segment.id}",
            functools.partial(self.store.views, tz=tz),
            step,
            segment.id,
        )
        report.contacts, report.seconds = walked.contacts, walked.seconds
        stamped = Segment(
            id=segment.id,
            tenant_id=segment.tenant_id,
            name=segment.name,
            kind=segment.kind,
            rule=segment.rule,
            version=segment.version,
            created_at=segment.created_at,
            updated_at=segment.updated_at,
            as_of=rfc3339(now),
        )
        await self.registry.save(stamped)
        logger.info(
            "Static segment %s snapshot: %d of %d contacts, %.2f s",
            segment.id,
            report.entered,
            report.contacts,
            report.seconds,
        )
        return stamped, report

    # -- lifecycle ---------------------------------------------------------------

    async def create(
        self, tenant_id: str, spec: SegmentSpec
    ) -> tuple[Segment, WalkReport]:
        segment = await self.registry.create(tenant_id, spec)
        if segment.kind == "static":
            return await self.snapshot(segment)
        return segment, await self.backfill(segment)

    async def edit(
        self,
        tenant_id: str,
        segment_id: str,
        spec: SegmentSpec,
    ) -> tuple[Segment, WalkReport]:
        old = await self.registry.get(tenant_id, segment_id)
        new = await self.registry.edit(tenant_id, segment_id, spec)
        if new.kind == "active" and new.rule != old.rule:
            return new, await self.backfill(new)
        return new, WalkReport()

    async def delete(self, tenant_id: str, segment_id: str) -> WalkReport:
        segment = await self.registry.delete(tenant_id, segment_id)
        members_key = self.store.keys.members(tenant_id, segment_id)
        if segment.kind == "static":
            report = WalkReport()
            now = await self.engine.now_us()
            cursor = 0
            while True:
                cursor, ids = await self.store.redis.sscan(
                    members_key, cursor, count=CHUNK
                )
                if ids:
                    await self.engine.sink.publish_membership(
                        [
                            Change(
                                ContactRef(tenant_id, text(i)),
                                segment.id,
                                segment.version,
                                "exited",
                                "definition",
                                now,
                                None,
                                2,
                            ).payload()
                            for i in ids
                        ]
                    )
                    report.exited += len(ids)
                if cursor == 0:
                    break
            await self.store.redis.delete(members_key)
            return report

        report = WalkReport()

        async def step(refs: list[ContactRef], _: None) -> None:
            outcome = await self.engine.update(
                {r: [] for r in refs}, reason="definition", drop=segment
            )
            _count(report, outcome.changes)

        walked = await self._walk(
            tenant_id, f"Deletion of {segment_id}", _nothing, step, segment_id
        )
        report.contacts, report.seconds = walked.contacts, walked.seconds
        await self.store.redis.delete(members_key)
        logger.info("Segment %s deleted: %d members exited", segment_id, report.exited)
        return report

    # -- reads ---------------------------------------------------------------------

    async def preview(self, tenant_id: str, rule: Rule, limit: int) -> WalkReport:
        compiled = compile_rule(rule)
        now = await self.engine.now_us()
        await self.engine.cache.refresh(await self.registry.epoch())
        tz = self.engine.cache.tenant(tenant_id).tz
        today = local_date_us(now, tz)
        report = WalkReport()

        async def step(refs: list[ContactRef], views: list[ContactView]) -> None:
            matches = compiled.matches
            for r, view in zip(refs, views, strict=True):
                if matches(view, today, tz):
                    report.entered += 1
                    if len(report.sample) < limit:
                        report.sample.append(r.contact_id)

        read = functools.partial(self.store.views, tz=tz)
        walked = await self._walk(tenant_id, "Preview", read, step, None)
        report.contacts, report.seconds = walked.contacts, walked.seconds
        return report

    async def members(
        self, tenant_id: str, segment_id: str, cursor: int, limit: int
    ) -> tuple[list[str], int, int]:
        """One page of members: ids, next cursor (0 at the end), total count.

        The member set is an index maintained after publication; for an active
        segment each page is checked against the contacts' profiles, which are
        the source of truth, so a page never lists a contact that is not a
        member.
        """
        segment = await self.registry.get(tenant_id, segment_id)
        key = self.store.keys.members(tenant_id, segment_id)
        next_cursor, raw = await self.store.redis.sscan(key, cursor, count=limit)
        ids = sorted(text(i) for i in raw)
        if segment.kind == "active" and ids:
            loaded = await self.store.load([ContactRef(tenant_id, i) for i in ids])
            ids = [
                ref.contact_id
                for ref, profile in loaded.profiles.items()
                if profile.membership.get(segment_id, 0) % 2
            ]
        count = int(await self.store.redis.scard(key))
        return ids, int(next_cursor), count

    async def segments_of(self, tenant_id: str, contact_id: str) -> list[str]:
        """Ids of the segments a contact is in (active and static)."""
        tenant = self.engine.cache.tenant(tenant_id)
        ref = ContactRef(tenant_id, contact_id)
        loaded = await self.store.load([ref])
        profile = loaded.profiles[ref]
        ids = [
            sid
            for sid, entry in profile.membership.items()
            if entry % 2 and sid in tenant.segments
        ]
        for segment in tenant.segments.values():
            if segment.kind == "static" and await self.store.redis.sismember(
                self.store.keys.members(tenant_id, segment.id), contact_id
            ):
                ids.append(segment.id)
        return sorted(ids)


__all__ = ["SegmentNotFoundError", "SegmentOperations", "WalkReport"]
