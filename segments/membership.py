"""Membership changes: deciding them, naming them, and their wire format.

A profile records, per active segment, whether the contact is a member and
how many changes it has had, as one integer: ``2 * changes + member``. A
change is emitted only when the freshly computed answer differs from the
recorded one, and the count then moves on by one. So for each segment and
contact the changes alternate, starting with ``entered``, whatever the mix of
events, clock ticks and backfills that caused them; and since the count is
part of the stored profile, the id of the n-th change is the same every time
it is (re-)emitted: ``membership_event_id`` hashes tenant, segment, contact
and n.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal
from zoneinfo import ZoneInfo

import orjson

from segments.registry import Segment
from signals.keys import ContactRef
from signals.profile import Profile
from signals.view import ContactView
from signals.windows import rfc3339, start_of_local_day, to_us

Reason = Literal["event", "clock", "definition", "snapshot"]
ChangeKind = Literal["entered", "exited"]


def membership_event_id(ref: ContactRef, segment_id: str, sequence: int) -> str:
    digest = hashlib.sha256(
        f"{ref.tenant_id}\x1f{segment_id}\x1f{ref.contact_id}\x1f{sequence}".encode()
    )
    return digest.hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Change:
    ref: ContactRef
    segment_id: str
    segment_version: int
    change: ChangeKind
    reason: Reason
    at_us: int
    caused_by: str | None
    sequence: int

    def payload(self) -> dict[str, Any]:
        """The record value on ``segments.membership`` (contract section 4)."""
        return {
            "event_id": membership_event_id(self.ref, self.segment_id, self.sequence),
            "tenant_id": self.ref.tenant_id,
            "segment_id": self.segment_id,
            "segment_version": self.segment_version,
            "contact_id": self.ref.contact_id,
            "change": self.change,
            "reason": self.reason,
            "at": rfc3339(self.at_us),
            "caused_by": self.caused_by,
        }


def record(
    profile: Profile,
    ref: ContactRef,
    segment: Segment,
    member: bool,
    *,
    reason: Reason,
    at_us: int,
    caused_by: str | None,
) -> Change | None:
    """Store ``member`` as the answer for ``segment``; the change, if any."""
    entry = profile.membership.get(segment.id, 0)
    count, was_member = divmod(entry, 2)
    if bool(was_member) == member:
        # Unchanged; a contact that never was a member has no entry at all.
        return None
    profile.membership[segment.id] = 2 * (count + 1) + int(member)
    return Change(
        ref=ref,
        segment_id=segment.id,
        segment_version=segment.version,
        change="entered" if member else "exited",
        reason=reason,
        at_us=at_us,
        caused_by=caused_by,
        sequence=count + 1,
    )


def evaluate(
    profile: Profile,
    view: ContactView,
    segments: Iterable[Segment],
    today: date,
    tz: ZoneInfo,
    *,
    reason: Reason,
    at_us: int,
    caused_by: str | None,
    answers: dict[str, bool] | None = None,
) -> list[Change]:
    """Re-evaluate ``segments`` for one contact and record the answers (also
    into ``answers``, by segment id, when given)."""
    ref = ContactRef(view.tenant_id, view.contact_id)
    changes = []
    for segment in segments:
        member = segment.compiled.matches(view, today, tz)
        if answers is not None:
            answers[segment.id] = member
        change = record(
            profile,
            ref,
            segment,
            member,
            reason=reason,
            at_us=at_us,
            caused_by=caused_by,
        )
        if change is not None:
            changes.append(change)
    return changes


def next_wake(
    view: ContactView,
    segments: Iterable[Segment],
    today: date,
    tz: ZoneInfo,
    answers: Mapping[str, bool] | None = None,
    until: date | None = None,
) -> tuple[int | None, str | None]:
    """The first instant (µs) at which any of ``segments`` can change by time,
    and the segment that changes then. ``answers`` may hold segments' answers
    on ``today``, already known. With ``until``, only changes on local dates
    up to it count: ``(None, None)`` when there is none."""
    soonest: date | None = None
    which: str | None = None
    known = answers or {}
    for segment in segments:
        day = segment.compiled.next_change(
            view, today, tz, known.get(segment.id), until
        )
        if day is not None and (soonest is None or day < soonest):
            soonest, which = day, segment.id
    if soonest is None:
        return None, None
    return to_us(start_of_local_day(soonest, tz)), which


def encode_outbox(changes: Iterable[dict[str, Any]]) -> bytes:
    items = list(changes)
    return orjson.dumps(items) if items else b""


def decode_outbox(raw: bytes) -> list[dict[str, Any]]:
    return list(orjson.loads(raw)) if raw else []
