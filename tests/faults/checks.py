"""End-of-run checks of a fault run, and the report they make.

After the cluster has settled, ``verify`` compares what the workers serve and
published with ``tests.reference``:

* every contact's 32 signals and attributes from
  ``GET /v1/tenants/{t}/contacts/{c}`` equal the model's at the test clock;
* folding ``segments.membership`` (first record of each ``event_id``) gives
  the model's membership, which is also each contact's ``segments`` in the API
  and what ``.../segments/{id}/members`` lists and counts;
* per (segment, contact) the distinct changes alternate, starting with
  ``entered``, and records repeated under one ``event_id`` are identical;
* every poison record reached ``engagement.deadletter`` once per source
  offset, with its original bytes and the expected ``error_kind``, and no valid
  record was dead-lettered.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.faults.cluster import Cluster
from tests.faults.stream import Record, Stream
from tests.reference import contacts_of, same_signals

Json = dict[str, Any]
#: tenant -> rule name -> segment id
SegmentIds = dict[str, dict[str, str]]

LIMIT = 8  # examples kept per kind of finding


@dataclass
class Findings:
    """What one ``verify`` found; every list holds readable lines."""

    contacts: int = 0
    signals: list[str] = field(default_factory=list)
    membership: list[str] = field(default_factory=list)
    alternation: list[str] = field(default_factory=list)
    repeats_differ: list[str] = field(default_factory=list)
    deadletter_missing: list[str] = field(default_factory=list)
    deadletter_unexpected: list[str] = field(default_factory=list)
    deadletter_repeated: list[str] = field(default_factory=list)
    membership_total: int = 0
    membership_distinct: int = 0
    deadletters: int = 0

    @property
    def mismatches(self) -> int:
        """Findings that break the contract (dead-letter repeats counted apart)."""
        return (
            len(self.signals)
            + len(self.membership)
            + len(self.alternation)
            + len(self.repeats_differ)
            + len(self.deadletter_missing)
            + len(self.deadletter_unexpected)
        )

    @property
    def membership_duplicates(self) -> int:
        return self.membership_total - self.membership_distinct

    def lines(self) -> list[str]:
        """The contract-breaking findings, a few examples each (dead-letter
        repeats are listed by the report, phase by phase)."""
        out = []
        for name in (
            "signals",
            "membership",
            "alternation",
            "repeats_differ",
            "deadletter_missing",
            "deadletter_unexpected",
        ):
            found: list[str] = getattr(self, name)
            if found:
                out.append(f"  {name}: {len(found)}")
                out += [f"    {line}" for line in found[:LIMIT]]
        return out


def _note(bucket: list[str], line: str) -> None:
    bucket.append(line)


async def verify(
    cluster: Cluster,
    stream: Stream,
    segments: SegmentIds,
    rules: Mapping[str, Json],
    *,
    deadletters: Sequence[Any] | None = None,
) -> Findings:
    """Compare the settled cluster with the model; see the module docstring.

    ``deadletters`` defaults to every record read from the dead-letter topic;
    pass a prefix of them to leave out those of a deliberate replay.
    """
    found = Findings()
    now = await cluster.now()
    model = contacts_of(stream.events)
    found.contacts = len(model)
    expected_members: dict[tuple[str, str], set[str]] = defaultdict(set)

    keys = sorted(model)
    for start in range(0, len(keys), 40):
        chunk = keys[start : start + 40]
        replies = await asyncio.gather(*(cluster.contact(t, c) for t, c in chunk))
        for (tenant_id, contact_id), (status, body) in zip(chunk, replies, strict=True):
            who = f"{tenant_id}/{contact_id}"
            if status != 200:
                _note(found.signals, f"{who}: GET answered {status} {body!r}")
                continue
            tz = stream.tenant(tenant_id).tz
            contact = model[(tenant_id, contact_id)]
            for diff in same_signals(body["signals"], contact.signals(now, tz)):
                _note(found.signals, f"{who}: {diff}")
            attrs = contact.attributes()
            if body["attributes"] != attrs:
                _note(
                    found.signals,
                    f"{who}: attributes {body['attributes']} != {attrs}",
                )
            ids = segments[tenant_id]
            by_id = {ids[name]: rule for name, rule in rules.items()}
            want = contact.segments(by_id, now, tz)
            for sid in want:
                expected_members[(tenant_id, sid)].add(contact_id)
            if set(body["segments"]) != want:
                _note(
                    found.membership,
                    f"{who}: API segments {sorted(body['segments'])} != "
                    f"expected {sorted(want)}",
                )

    # The membership topic: fold, alternation, repeated ids.
    records = cluster.membership.values()
    found.membership_total = len(records)
    first: dict[str, Json] = {}
    for record in records:
        seen = first.setdefault(record["event_id"], record)
        if seen != record:
            _note(
                found.repeats_differ,
                f"event_id {record['event_id']}: {seen} then {record}",
            )
    found.membership_distinct = len(first)
    folded: dict[tuple[str, str], set[str]] = defaultdict(set)
    last: dict[tuple[str, str, str], str] = {}
    for record in first.values():
        key = (record["tenant_id"], record["segment_id"], record["contact_id"])
        expected = "exited" if last.get(key) == "entered" else "entered"
        if record["change"] != expected:
            _note(found.alternation, f"{key}: {record['change']} after {last.get(key)}")
        last[key] = record["change"]
        group = folded[(record["tenant_id"], record["segment_id"])]
        if record["change"] == "entered":
            group.add(record["contact_id"])
        else:
            group.discard(record["contact_id"])
    for tenant_id, ids in segments.items():
        for name, sid in ids.items():
            want = expected_members.get((tenant_id, sid), set())
            got = folded.get((tenant_id, sid), set())
            if got != want:
                _note(
                    found.membership,
                    f"{tenant_id}/{name}: fold has {sorted(got - want)[:5]} too many, "
                    f"{sorted(want - got)[:5]} missing",
                )
            listed, count = await cluster.members(tenant_id, sid)
            if listed != want or count != len(want):
                _note(
                    found.membership,
                    f"{tenant_id}/{name}: members endpoint lists {len(listed)} "
                    f"(count {count}), expected {len(want)}; "
                    f"extra {sorted(listed - want)[:5]}, "
                    f"missing {sorted(want - listed)[:5]}",
                )

    check_deadletters(
        found,
        stream.poisons,
        cluster.prefix,
        cluster.deadletters.records if deadletters is None else deadletters,
    )
    return found


def check_deadletters(
    found: Findings, poisons: Sequence[Record], prefix: str, letters: Sequence[Any]
) -> None:
    """Each poison record once per source offset; nothing else dead-lettered."""
    found.deadletters = len(letters)
    by_source: dict[tuple[str, int, int], Record] = {
        (prefix + p.topic, p.partition, p.offset): p for p in poisons
    }
    by_value = {p.value: p for p in poisons if p.value is not None}
    seen: Counter[tuple[str, int, int]] = Counter()
    reached: set[int] = set()
    for letter in letters:
        headers = {k: v.decode() for k, v in letter.headers}
        source = (
            headers.get("source_topic", "?"),
            int(headers.get("source_partition", -1)),
            int(headers.get("source_offset", -1)),
        )
        seen[source] += 1
        poison = by_source.get(source)
        if poison is None and letter.value:
            poison = by_value.get(letter.value)  # a copy the producer re-sent
        if poison is None:
            _note(
                found.deadletter_unexpected,
                f"{source} {headers.get('error_kind')}: {letter.value[:120]!r}",
            )
            continue
        reached.add(id(poison))
        if (letter.value or None) != poison.value:
            _note(found.deadletter_unexpected, f"{source}: bytes changed")
        if headers.get("error_kind") != poison.expected_error:
            _note(
                found.deadletter_unexpected,
                f"{source} ({poison.poison}): error_kind "
                f"{headers.get('error_kind')}, expected {poison.expected_error}",
            )
    for source, times in seen.items():
        if times > 1:
            _note(found.deadletter_repeated, f"{source} dead-lettered {times} times")
    for poison in poisons:
        if id(poison) not in reached:
            _note(
                found.deadletter_missing,
                f"{poison.poison} at {poison.topic}[{poison.partition}]@"
                f"{poison.offset} never dead-lettered",
            )
