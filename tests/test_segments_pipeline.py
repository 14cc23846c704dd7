"""Segments through a real worker, Kafka and Redis (contract sections 3-6).

Every test drives the worker through its public surfaces only: events on the
input topics, the test clock, the HTTP API, and the records it publishes on
``segments.membership``. Operator semantics in depth are unit-tested in
``test_evaluate.py``; here the point is the wiring, end to end.

The long generated run at the end checks the fold of the membership topic
against an evaluator written in this file, independent of ``segments``.
"""

from __future__ import annotations

import asyncio
import random
from calendar import isleap
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from tests.events import Events
from tests.harness import WorkerProcess, fold, unique

DAY = timedelta(days=1)

Json = dict[str, Any]


# --- rules and the HTTP API --------------------------------------------------


def cond(field: str, op: str, value: Any = None) -> Json:
    condition: Json = {"field": field, "op": op}
    if value is not None:
        condition["value"] = value
    return condition


def any_of(*groups: Iterable[Json]) -> Json:
    """OR of groups, each an AND of conditions."""
    return {"any": [{"all": list(group)} for group in groups]}


def all_of(*conditions: Json) -> Json:
    return any_of(conditions)


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def local(day: date, tz: ZoneInfo, hour: int = 0, minute: int = 0) -> datetime:
    """A wall-clock time in ``tz``, as an aware datetime."""
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz)


def midnight(day: date, tz: ZoneInfo) -> datetime:
    """The instant (UTC) at which the local date ``day`` begins in ``tz``."""
    return local(day, tz).astimezone(UTC)


async def create(
    worker: WorkerProcess,
    tenant: str,
    rule: Json,
    *,
    kind: str = "active",
    name: str | None = None,
) -> Json:
    status, body = await worker.request(
        "POST",
        f"/v1/tenants/{tenant}/segments",
        {"name": name or unique("seg"), "kind": kind, "rule": rule},
    )
    assert status == 201, body
    assert body["kind"] == kind and body["version"] == 1
    result: Json = body
    return result


async def set_limit(worker: WorkerProcess, tenant: str, limit: int) -> None:
    status, body = await worker.request(
        "PUT", f"/v1/tenants/{tenant}", {"segment_limit": limit}
    )
    assert status == 200, body
    assert body["segment_limit"] == limit


async def segments_of(worker: WorkerProcess, tenant: str, contact: str) -> set[str]:
    return set((await worker.contact(tenant, contact))["segments"])


async def contacts(
    worker: WorkerProcess, tenant: str, ids: Sequence[str]
) -> dict[str, Json]:
    """GET every contact, a few dozen requests at a time."""
    out: dict[str, Json] = {}
    for start in range(0, len(ids), 50):
        chunk = ids[start : start + 50]
        bodies = await asyncio.gather(*(worker.contact(tenant, c) for c in chunk))
        out.update(zip(chunk, bodies, strict=True))
    return out


async def member_pages(
    worker: WorkerProcess, tenant: str, segment: str, limit: int
) -> list[Json]:
    """Every page of the members endpoint, following ``next_cursor`` to null."""
    pages = []
    path = f"/v1/tenants/{tenant}/segments/{segment}/members?limit={limit}"
    cursor: str | None = None
    for _ in range(10_000):
        status, body = await worker.get(
            path if cursor is None else f"{path}&cursor={cursor}"
        )
        assert status == 200, body
        pages.append(body)
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
    raise AssertionError("the members cursor never reached null")


async def members_listed(
    worker: WorkerProcess, tenant: str, segment: str, limit: int = 100
) -> set[str]:
    pages = await member_pages(worker, tenant, segment, limit)
    listed = [c for page in pages for c in page["members"]]
    assert len(listed) == len(set(listed)), f"a member listed twice: {listed}"
    return set(listed)


async def move_clock(worker: WorkerProcess, instant: datetime) -> None:
    assert instant >= await worker.now(), "the test clock only moves forward"
    await worker.set_clock(instant)
    await worker.settle()


def membership(worker: WorkerProcess, tenant: str) -> list[Json]:
    """The tenant's membership records in topic order, each event id once.

    A record published again under the same event id is a re-emission; the
    long generated run checks that none happen, the other tests look at the
    distinct records.
    """
    seen: set[str] = set()
    out = []
    for record in worker.changes(tenant):
        if record["event_id"] not in seen:
            seen.add(record["event_id"])
            out.append(record)
    return out


def check_no_replays(records: Sequence[Json]) -> None:
    times = Counter(r["event_id"] for r in records)
    replayed = {r["event_id"]: r for r in records if times[r["event_id"]] > 1}
    reasons = Counter(r["reason"] for r in replayed.values())
    assert not replayed, (
        f"{len(replayed)} of {len(times)} membership event ids were published "
        f"more than once (by reason: {dict(reasons)}), e.g. "
        f"{list(replayed.values())[:2]}"
    )


def check_alternation(changes: Sequence[Json]) -> None:
    """Per (segment, contact): entered, exited, entered, ..."""
    last: dict[tuple[str, str], str] = {}
    for change in changes:
        key = (change["segment_id"], change["contact_id"])
        expected = "exited" if last.get(key) == "entered" else "entered"
        assert change["change"] == expected, (key, change)
        last[key] = change["change"]


def summary(changes: Iterable[Json]) -> set[tuple[str, str, str, str]]:
    return {
        (c["segment_id"], c["contact_id"], c["change"], c["reason"]) for c in changes
    }


# --- an evaluator of the rule language, independent of segments.evaluate -----

_DATE_OPS = {
    "in_last",
    "not_in_last",
    "day_in_last",
    "day_in_this_month",
    "day_in_month",
    "before",
    "after",
    "on",
}
_COUNT_OPS = {"eq", "ne", "gt", "gte", "lt", "lte", "between"}


def anniversary(year: int, day: date) -> date:
    """``day``'s month and day in ``year``; 29 February is 28 February if need be."""
    if (day.month, day.day) == (2, 29) and not isleap(year):
        return date(year, 2, 28)
    return date(year, day.month, day.day)


def as_local_date(raw: Any, tz: ZoneInfo) -> date | None:
    """A signal's RFC 3339 instant or an attribute's ISO date, as a local date."""
    if not isinstance(raw, str):
        return None
    try:
        if len(raw) == 10:
            return date.fromisoformat(raw)
        instant = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
    if instant.tzinfo is None:
        return None
    return instant.astimezone(tz).date()


def date_holds(op: str, value: Any, day: date, today: date) -> bool:
    if op == "in_last":
        return day >= today - (value - 1) * DAY
    if op == "not_in_last":
        return day < today - (value - 1) * DAY
    if op == "day_in_last":
        first = today - (value - 1) * DAY
        return any(
            first <= anniversary(y, day) <= today for y in (today.year - 1, today.year)
        )
    if op == "day_in_this_month":
        return day.month == today.month
    if op == "day_in_month":
        return day.month == value
    bound = date.fromisoformat(value)
    return {"before": day < bound, "after": day > bound, "on": day == bound}[op]


def count_holds(op: str, value: Any, n: float) -> bool:
    if op == "between":
        return bool(value[0] <= n <= value[1])
    return {
        "eq": n == value,
        "ne": n != value,
        "gt": n > value,
        "gte": n >= value,
        "lt": n < value,
        "lte": n <= value,
    }[op]


def string_holds(op: str, value: Any, s: str | None) -> bool:
    if op in ("in", "not_in"):
        inside = s is not None and s in {v.casefold() for v in value}
        return inside if op == "in" else not inside
    operand = value.casefold()
    if op == "is":
        return s == operand
    if op == "is_not":
        return s != operand
    if op == "contains":
        return s is not None and operand in s
    if op == "not_contains":
        return s is None or operand not in s
    assert op == "starts_with", op
    return s is not None and s.startswith(operand)


def holds(condition: Json, contact: Json, today: date, tz: ZoneInfo) -> bool:
    """One condition on a contact as the contacts API returns it."""
    kind, _, name = condition["field"].partition(".")
    op, value = condition["op"], condition.get("value")
    source = contact["signals"] if kind == "signal" else contact["attributes"]
    raw = source.get(name)
    if op == "is_set":
        return raw is not None
    if op == "is_not_set":
        return raw is None
    if op in _DATE_OPS:
        day = as_local_date(raw, tz)
        return day is not None and date_holds(op, value, day, today)
    if op in _COUNT_OPS:
        number = isinstance(raw, int | float) and not isinstance(raw, bool)
        return number and count_holds(op, value, raw)
    if raw is not None and not isinstance(raw, str):
        return False  # a value of another type: a mismatch is false
    return string_holds(op, value, None if raw is None else raw.casefold())


def matches(rule: Json, contact: Json, today: date, tz: ZoneInfo) -> bool:
    return any(
        all(holds(c, contact, today, tz) for c in group["all"]) for group in rule["any"]
    )


# --- every operator, on signals and on attributes ----------------------------


async def test_every_operator_end_to_end_in_a_far_time_zone(
    worker: WorkerProcess, events: Events, tenant: str
) -> None:
    zone = "Pacific/Kiritimati"  # UTC+14: the local date runs a day ahead
    tz = ZoneInfo(zone)
    await worker.set_timezone(tenant, zone)
    await set_limit(worker, tenant, 80)
    # "Now" is 10:00 on a local 15th, which is still the 14th in UTC.
    today = (await worker.now()).astimezone(tz).date() + DAY
    while today.day != 15:
        today += DAY
    await move_clock(worker, local(today, tz, 10))
    assert (await worker.now()).date() == today - DAY

    def ago(days: int, hour: int) -> datetime:
        return local(today - days * DAY, tz, hour)

    month = today.month
    previous_month = (today - 20 * DAY).month
    other_month = (month + 1) % 12 + 1
    birthday_a = date(1992, month, 12)
    # Local dates of last_link_clicked: a today-2 (today-3 in UTC), b today-20,
    # d today-7 at 23:00 (09:00 UTC, so inside "the last 7 days" in UTC).
    cases: list[tuple[str, str, Any, set[str]]] = [
        ("signal.last_link_clicked", "in_last", 7, {"a"}),
        ("signal.last_link_clicked", "not_in_last", 7, {"b", "d"}),
        ("signal.last_link_clicked", "day_in_last", 3, {"a"}),
        ("signal.last_link_clicked", "day_in_this_month", None, {"a", "d"}),
        ("signal.last_link_clicked", "day_in_month", previous_month, {"b"}),
        ("signal.last_link_clicked", "before", str(today - 10 * DAY), {"b"}),
        ("signal.last_link_clicked", "after", str(today - 5 * DAY), {"a"}),
        ("signal.last_link_clicked", "on", str(today - 2 * DAY), {"a"}),
        ("signal.last_link_clicked", "on", str(today - 7 * DAY), {"d"}),
        ("signal.last_link_clicked", "is_set", None, {"a", "b", "d"}),
        ("signal.last_link_clicked", "is_not_set", None, {"c"}),
        ("attribute.birthday", "day_in_last", 7, {"a"}),
        ("attribute.birthday", "day_in_this_month", None, {"a"}),
        ("attribute.birthday", "day_in_month", other_month, {"b"}),
        ("attribute.birthday", "before", "1990-01-01", {"b"}),
        ("attribute.birthday", "after", "1990-01-01", {"a"}),
        ("attribute.birthday", "on", str(birthday_a), {"a"}),
        ("attribute.birthday", "is_set", None, {"a", "b", "c"}),
        ("attribute.birthday", "is_not_set", None, {"d"}),
        ("attribute.renewal", "in_last", 7, {"a"}),
        ("attribute.renewal", "not_in_last", 7, {"b"}),
        ("signal.campaigns_received_30d", "eq", 2, {"c"}),
        ("signal.campaigns_received_30d", "ne", 2, {"a", "b", "d"}),
        ("signal.campaigns_received_30d", "gt", 1, {"c", "d"}),
        ("signal.campaigns_received_30d", "gte", 1, {"b", "c", "d"}),
        ("signal.campaigns_received_30d", "lt", 2, {"a", "b"}),
        ("signal.campaigns_received_30d", "lte", 2, {"a", "b", "c"}),
        ("signal.campaigns_received_30d", "between", [1, 2], {"b", "c"}),
        ("attribute.age", "eq", 30, {"a"}),
        ("attribute.age", "ne", 30, {"b"}),
        ("attribute.age", "gt", 30, {"b"}),
        ("attribute.age", "gte", 30, {"a", "b"}),
        ("attribute.age", "lt", 40, {"a"}),
        ("attribute.age", "lte", 30, {"a"}),
        ("attribute.age", "between", [40, 50], {"b"}),
        ("signal.contact_source", "is", "import-csv", {"a"}),
        ("signal.contact_source", "is_not", "API", {"a", "c", "d"}),
        ("signal.contact_source", "in", ["API", "import-manual"], {"b", "c"}),
        ("signal.contact_source", "not_in", ["api"], {"a", "c", "d"}),
        ("signal.contact_source", "contains", "PORT", {"a", "c"}),
        ("signal.contact_source", "not_contains", "csv", {"b", "c", "d"}),
        ("signal.contact_source", "starts_with", "imp", {"a", "c"}),
        ("signal.contact_source", "is_set", None, {"a", "b", "c"}),
        ("signal.contact_source", "is_not_set", None, {"d"}),
        ("attribute.city", "is", "pune", {"a"}),
        ("attribute.city", "is_not", "PUNE", {"b", "d"}),
        ("attribute.city", "in", ["Pune", "Delhi"], {"a"}),
        ("attribute.city", "not_in", ["pune"], {"b", "d"}),
        ("attribute.city", "contains", "mum", {"b"}),
        ("attribute.city", "not_contains", "U", {"d"}),
        ("attribute.city", "starts_with", "p", {"a"}),
        ("attribute.city", "is_set", None, {"a", "b", "c"}),
        ("attribute.city", "is_not_set", None, {"d"}),
    ]
    by_id: dict[str, tuple[str, str, Any, set[str]]] = {}
    for case in cases:
        field, op, value, _ = case
        body = await create(
            worker, tenant, all_of(cond(field, op, value)), name=f"{field} {op}"
        )
        by_id[body["id"]] = case

    await worker.publish(
        [
            events.updated(
                "a",
                ago(1, 9),
                {
                    "birthday": str(birthday_a),
                    "renewal": str(today - 3 * DAY),
                    "age": 30,
                    "city": "Pune",
                },
                source="Import-CSV",
            ),
            events.click("a", ago(2, 5)),
            events.updated(
                "b",
                ago(1, 9),
                {
                    "birthday": str(date(1988, other_month, 5)),
                    "renewal": str(today - 30 * DAY),
                    "age": 45.5,
                    "city": "Mumbai",
                },
                source="api",
            ),
            events.click("b", ago(20, 12)),
            events.campaign("b", ago(3, 12)),
            events.updated(
                "c",
                ago(1, 9),
                {"birthday": "someday", "renewal": "2026-13-45", "age": "thirty"},
                source="Import-Manual",
            ),
            events.updated("c", ago(1, 10), {"city": 7}),
            events.campaign("c", ago(5, 12)),
            events.campaign("c", ago(6, 12)),
            events.click("d", ago(7, 23)),
            *[events.campaign("d", ago(8 + i, 12)) for i in range(5)],
        ]
    )
    await worker.settle()

    api = {c: await segments_of(worker, tenant, c) for c in "abcd"}
    changes = membership(worker, tenant)
    folded = fold(changes)
    for segment_id, (field, op, value, expected) in by_id.items():
        label = f"{field} {op} {value}"
        assert {c for c, ids in api.items() if segment_id in ids} == expected, label
        assert folded.get(segment_id, set()) == expected, label
    assert {c["reason"] for c in changes} == {"event"}
    check_alternation(changes)


# --- AND / OR ----------------------------------------------------------------


async def test_and_or_combinations(
    worker: WorkerProcess, events: Events, tenant: str
) -> None:
    now = await worker.now()
    t = now - timedelta(hours=3)
    rule = any_of(
        [
            cond("attribute.city", "is", "Pune"),
            cond("attribute.plan", "in", ["gold", "platinum"]),
        ],
        [
            cond("signal.links_clicked_7d", "gte", 2),
            cond("signal.contact_source", "is_set"),
        ],
    )
    segment = (await create(worker, tenant, rule))["id"]
    # contact: attributes, source, clicks, member?
    people: dict[str, tuple[Json, str | None, int, bool]] = {
        "p1": ({"city": "Pune", "plan": "gold"}, None, 0, True),
        "p2": ({"city": "Pune", "plan": "silver"}, None, 0, False),
        "p3": ({"city": "Delhi", "plan": "gold"}, "crm", 2, True),
        "p4": ({"city": "Delhi", "plan": "gold"}, None, 2, False),
        "p5": ({"city": "Pune", "plan": "Platinum"}, "crm", 3, True),
        "p6": ({"city": "Delhi"}, "crm", 1, False),
        "p7": ({"plan": "gold"}, "crm", 0, False),
    }
    batch = []
    for c, (attributes, source, clicks, _) in people.items():
        batch.append(events.updated(c, t, attributes, source=source))
        batch += [events.click(c, t + timedelta(minutes=i)) for i in range(clicks)]
    await worker.publish(batch)
    await worker.settle()
    expected = {c for c, person in people.items() if person[3]}
    assert fold(membership(worker, tenant)).get(segment, set()) == expected
    for c in people:
        assert (segment in await segments_of(worker, tenant, c)) == (c in expected)

    before = len(membership(worker, tenant))
    await worker.publish(
        [
            events.updated("p2", t + DAY / 24, {"plan": "gold"}),  # joins group 1
            events.updated("p5", t + DAY / 24, {"city": "Delhi"}),  # still group 2
            events.updated("p1", t + DAY / 24, {"city": None}),  # leaves group 1
            events.click("p6", t + DAY / 24),  # second click: joins group 2
            events.updated("p7", t + DAY / 24, {"city": "Pune"}),  # joins group 1
        ]
    )
    await worker.settle()
    new = membership(worker, tenant)[before:]
    assert summary(new) == {
        (segment, "p2", "entered", "event"),
        (segment, "p1", "exited", "event"),
        (segment, "p6", "entered", "event"),
        (segment, "p7", "entered", "event"),
    }
    final = {"p2", "p3", "p5", "p6", "p7"}
    assert fold(membership(worker, tenant))[segment] == final
    for c in people:
        assert (segment in await segments_of(worker, tenant, c)) == (c in final)


# --- the contract's example, both ways ---------------------------------------


async def test_counter_and_in_last_segments_select_the_same_contacts(
    worker: WorkerProcess, events: Events, tenant: str
) -> None:
    zone = "Pacific/Pago_Pago"  # UTC-11
    tz = ZoneInfo(zone)
    await worker.set_timezone(tenant, zone)
    rng = random.Random(31)
    now = await worker.now()
    clicks: dict[str, list[datetime]] = {}
    batch = []
    for i in range(60):
        c = f"x{i:02d}"
        times = [
            now - timedelta(minutes=rng.randrange(1, 60 * 24 * 12))
            for _ in range(rng.randrange(0, 3))
        ]
        clicks[c] = times
        batch.append(events.inbound(c, now - timedelta(days=20)))
        batch += [events.click(c, at) for at in times]
    await worker.publish(batch)
    await worker.settle()
    counter = (
        await create(worker, tenant, all_of(cond("signal.links_clicked_7d", "gte", 1)))
    )["id"]
    in_last = (
        await create(
            worker, tenant, all_of(cond("signal.last_link_clicked", "in_last", 7))
        )
    )["id"]
    await worker.settle()  # the backfills' records read

    async def compare(step: int) -> set[str]:
        current = await worker.now()
        today = current.astimezone(tz).date()
        expected = {
            c
            for c, times in clicks.items()
            if times and max(times).astimezone(tz).date() >= today - 6 * DAY
        }
        folded = fold(membership(worker, tenant))
        assert folded.get(counter, set()) == expected, step
        assert folded.get(in_last, set()) == expected, step
        for c in rng.sample(sorted(clicks), 10):
            ids = await segments_of(worker, tenant, c)
            assert (counter in ids) == (in_last in ids) == (c in expected), (step, c)
        return expected

    seen = [await compare(0)]
    for step in range(1, 7):
        await move_clock(
            worker, await worker.now() + timedelta(hours=rng.randint(13, 40))
        )
        seen.append(await compare(step))
        # New clicks between the moves, some of them on days already left behind.
        current = await worker.now()
        fresh = []
        for c in rng.sample(sorted(clicks), 6):
            at = current - timedelta(minutes=rng.randrange(1, 60 * 24 * 9))
            clicks[c].append(at)
            fresh.append(events.click(c, at))
        await worker.publish(fresh)
        await worker.settle()
        seen.append(await compare(step))
    assert any(a - b for a, b in pairwise(seen)), "nobody left"
    assert any(b - a for a, b in pairwise(seen)), "nobody came"

    # Each contact went through the same changes, for the same reasons, at the
    # same instants, in both segments.
    def history(segment: str) -> dict[str, list[tuple[Any, ...]]]:
        out: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        for r in membership(worker, tenant):
            if r["segment_id"] == segment:
                out[r["contact_id"]].append(
                    (r["change"], r["reason"], when(r["at"]), r["caused_by"])
                )
        return out

    assert history(counter) == history(in_last)
    reasons = {r["reason"] for r in membership(worker, tenant)}
    assert reasons == {"definition", "event", "clock"}
    check_alternation(membership(worker, tenant))


# --- entering and leaving by events ------------------------------------------


async def test_entering_and_leaving_by_events(
    worker: WorkerProcess, events: Events, tenant: str
) -> None:
    now = await worker.now()
    gold = (await create(worker, tenant, all_of(cond("attribute.plan", "is", "gold"))))[
        "id"
    ]
    clicked = (
        await create(worker, tenant, all_of(cond("signal.links_clicked_7d", "gte", 1)))
    )["id"]

    async def step(batch: list[Json]) -> list[Json]:
        before = len(membership(worker, tenant))
        await worker.publish(batch)
        await worker.settle()
        return membership(worker, tenant)[before:]

    def only(records: list[Json], segment: str, change: str, cause: Json) -> None:
        assert len(records) == 1, records
        r = records[0]
        assert (r["segment_id"], r["contact_id"], r["change"]) == (segment, "e", change)
        assert r["reason"] == "event"
        assert r["caused_by"] == cause["event_id"]
        assert r["segment_version"] == 1
        assert r["tenant_id"] == tenant
        assert when(r["at"]) == now

    joins = events.updated("e", now - timedelta(minutes=30), {"plan": "Gold"})
    only(await step([joins]), gold, "entered", joins)
    click = events.click("e", now - timedelta(minutes=20))
    only(await step([click]), clicked, "entered", click)
    leaves = events.updated("e", now - timedelta(minutes=10), {"plan": "silver"})
    only(await step([leaves]), gold, "exited", leaves)
    assert await segments_of(worker, tenant, "e") == {clicked}

    # An older value arriving late, a replay, and an unrelated change: nothing.
    stale = events.updated("e", now - timedelta(minutes=25), {"plan": "gold"})
    unrelated = events.updated("e", now - timedelta(minutes=5), {"city": "Pune"})
    assert await step([stale, joins, click, unrelated]) == []

    later = await worker.advance(hours=2)
    back = events.updated("e", later - timedelta(minutes=1), {"plan": "GOLD"})
    records = await step([back])
    assert len(records) == 1 and records[0]["caused_by"] == back["event_id"]
    assert records[0]["change"] == "entered" and when(records[0]["at"]) == later

    keys = {
        rec.key
        for rec in worker.membership.records
        if orjson.loads(rec.value)["tenant_id"] == tenant
    }
    assert keys == {f"{tenant}:e".encode()}
    assert fold(membership(worker, tenant)) == {gold: {"e"}, clicked: {"e"}}
    assert await segments_of(worker, tenant, "e") == {gold, clicked}
    check_alternation(membership(worker, tenant))


# --- leaving and entering by the clock alone ---------------------------------


async def test_leaving_and_entering_by_the_clock_at_local_midnight(
    worker: WorkerProcess, events: Events, tenant: str
) -> None:
    zone = "Pacific/Pago_Pago"  # UTC-11: local midnight is 11:00 UTC
    tz = ZoneInfo(zone)
    await worker.set_timezone(tenant, zone)
    now = await worker.now()
    recent = now - timedelta(minutes=1)
    today = recent.astimezone(tz).date()
    older = local(today - 5 * DAY, tz, 12)
    seg_in = (
        await create(
            worker, tenant, all_of(cond("signal.last_link_clicked", "in_last", 3))
        )
    )["id"]
    seg_out = (
        await create(
            worker, tenant, all_of(cond("signal.last_link_clicked", "not_in_last", 3))
        )
    )["id"]
    seg_count = (
        await create(worker, tenant, all_of(cond("signal.links_clicked_7d", "gte", 2)))
    )["id"]
    await worker.publish(
        [
            events.click("x", recent),
            events.click("x", older),
            events.click("y", older),
        ]
    )
    await worker.settle()
    assert await segments_of(worker, tenant, "x") == {seg_in, seg_count}
    assert await segments_of(worker, tenant, "y") == {seg_out}

    async def clock_step(instant: datetime) -> list[Json]:
        before = len(membership(worker, tenant))
        await move_clock(worker, instant)
        new = membership(worker, tenant)[before:]
        for r in new:
            assert r["reason"] == "clock" and r["caused_by"] is None, r
        return new

    # Late on the next day: nothing has changed yet.
    assert await clock_step(local(today + DAY, tz, 23, 30)) == []
    # Local today+2: the click of today-5 leaves the 7-day counter.
    new = await clock_step(local(today + 2 * DAY, tz, 5, 30))
    assert summary(new) == {(seg_count, "x", "exited", "clock")}
    assert when(new[0]["at"]) == midnight(today + 2 * DAY, tz)
    # Local today+3: the last click is no longer in the last 3 days.
    new = await clock_step(local(today + 3 * DAY, tz, 18))
    assert summary(new) == {
        (seg_in, "x", "exited", "clock"),
        (seg_out, "x", "entered", "clock"),
    }
    boundary = midnight(today + 3 * DAY, tz)
    assert boundary.hour == 11
    assert {when(r["at"]) for r in new} == {boundary}
    assert await segments_of(worker, tenant, "x") == {seg_out}
    assert await segments_of(worker, tenant, "y") == {seg_out}
    assert fold(membership(worker, tenant)) == {
        seg_in: set(),
        seg_out: {"x", "y"},
        seg_count: set(),
    }
    check_alternation(membership(worker, tenant))


# --- create, edit, delete ----------------------------------------------------


async def test_create_edit_and_delete_publish_their_differences(
    worker: WorkerProcess, events: Events, tenant: str
) -> None:
    now = await worker.now()
    people = [f"k{i}" for i in range(1, 7)]
    await worker.publish(
        [
            events.updated(c, now - timedelta(hours=1), {"score": i + 1})
            for i, c in enumerate(people)
        ]
    )
    await worker.settle()
    base = f"/v1/tenants/{tenant}/segments"

    def check(records: list[Json], version: int, reason: str) -> None:
        for r in records:
            assert r["segment_version"] == version, r
            assert r["reason"] == reason and r["caused_by"] is None, r
            assert when(r["at"]) == now, r

    # Create: the backfill enters every contact that matches.
    body = await create(
        worker, tenant, all_of(cond("attribute.score", "gte", 3)), name="three up"
    )
    segment = body["id"]
    assert body["backfill"]["contacts"] == 6 and body["backfill"]["entered"] == 4
    await worker.settle()
    records = membership(worker, tenant)
    assert summary(records) == {
        (segment, c, "entered", "definition") for c in ("k3", "k4", "k5", "k6")
    }
    check(records, 1, "definition")

    # Edit the rule: version 2, only the difference is published.
    rule2 = any_of(
        [cond("attribute.score", "gte", 4)], [cond("attribute.score", "eq", 1)]
    )
    status, body = await worker.request(
        "PUT", f"{base}/{segment}", {"name": "four up", "kind": "active", "rule": rule2}
    )
    assert status == 200, body
    assert body["version"] == 2 and body["rule"] == rule2
    await worker.settle()
    new = membership(worker, tenant)[len(records) :]
    assert summary(new) == {
        (segment, "k3", "exited", "definition"),
        (segment, "k1", "entered", "definition"),
    }
    check(new, 2, "definition")
    assert fold(membership(worker, tenant))[segment] == {"k1", "k4", "k5", "k6"}

    # Edit the name alone: version 3, nobody's answer changes, nothing published.
    seen = len(membership(worker, tenant))
    status, body = await worker.request(
        "PUT", f"{base}/{segment}", {"name": "renamed", "kind": "active", "rule": rule2}
    )
    assert status == 200, body
    assert body["version"] == 3 and body["name"] == "renamed"
    await worker.settle()
    assert membership(worker, tenant)[seen:] == []
    status, body = await worker.get(f"{base}/{segment}")
    assert status == 200 and body["version"] == 3

    # The kind of a segment cannot change.
    status, body = await worker.request(
        "PUT", f"{base}/{segment}", {"name": "x", "kind": "static", "rule": rule2}
    )
    assert status == 422, body
    status, body = await worker.get(f"{base}/{segment}")
    assert (body["version"], body["kind"], body["name"]) == (3, "active", "renamed")

    # Events after the edits carry the current version.
    moves = events.updated("k2", now - timedelta(minutes=1), {"score": 9})
    await worker.publish([moves])
    await worker.settle()
    new = membership(worker, tenant)[seen:]
    assert summary(new) == {(segment, "k2", "entered", "event")}
    assert new[0]["segment_version"] == 3
    assert new[0]["caused_by"] == moves["event_id"]
    members = {"k1", "k2", "k4", "k5", "k6"}
    for c in people:
        assert (segment in await segments_of(worker, tenant, c)) == (c in members)
    assert await members_listed(worker, tenant, segment) == members

    # Delete: every member exits, reason "definition".
    seen = len(membership(worker, tenant))
    status, body = await worker.request("DELETE", f"{base}/{segment}")
    assert status == 200, body
    assert body["exited"] == len(members)
    await worker.settle()
    new = membership(worker, tenant)[seen:]
    assert summary(new) == {(segment, c, "exited", "definition") for c in members}
    check(new, 3, "definition")
    assert fold(membership(worker, tenant))[segment] == set()
    status, _ = await worker.get(f"{base}/{segment}")
    assert status == 404
    status, body = await worker.get(base)
    assert status == 200 and body["segments"] == []
    for c in people:
        assert await segments_of(worker, tenant, c) == set()

    # A former member's later events publish nothing for the deleted segment.
    seen = len(membership(worker, tenant))
    await worker.publish([events.updated("k4", now, {"score": 10})])
    await worker.settle()
    assert membership(worker, tenant)[seen:] == []
    check_alternation(membership(worker, tenant))


# --- static segments ---------------------------------------------------------


async def test_a_static_segment_stays_as_it_was_taken(
    worker: WorkerProcess, events: Events, tenant: str
) -> None:
    now = await worker.now()
    t = now - timedelta(minutes=10)
    await worker.publish(
        [
            events.updated("s1", t, {"plan": "gold"}),
            events.click("s1", t),
            events.updated("s2", t, {"plan": "gold"}),
            events.updated("s3", t, {"plan": "silver"}),
            events.click("s3", t),
            events.updated("s4", t, {"plan": "silver"}),
        ]
    )
    await worker.settle()
    rule = any_of(
        [cond("attribute.plan", "is", "gold")],
        [cond("signal.last_link_clicked", "in_last", 2)],
    )
    body = await create(worker, tenant, rule, kind="static", name="frozen")
    static = body["id"]
    assert body["as_of"] is not None and when(body["as_of"]) == now
    assert body["snapshot"]["entered"] == 3
    twin = (await create(worker, tenant, rule, name="live"))["id"]
    await worker.settle()
    taken = {"s1", "s2", "s3"}
    records = membership(worker, tenant)
    snapshot = [r for r in records if r["segment_id"] == static]
    assert summary(snapshot) == {(static, c, "entered", "snapshot") for c in taken}
    assert all(r["segment_version"] == 1 and when(r["at"]) == now for r in snapshot)
    assert fold(records)[twin] == taken

    async def check_static() -> None:
        assert await members_listed(worker, tenant, static) == taken
        status, body = await worker.get(f"/v1/tenants/{tenant}/segments/{static}")
        assert status == 200 and when(body["as_of"]) == now
        for c in ("s1", "s2", "s3", "s4"):
            assert (static in await segments_of(worker, tenant, c)) == (c in taken)
        assert fold(membership(worker, tenant))[static] == taken

    await check_static()
    # Its contacts change: the active twin follows, the static segment does not.
    later = now + timedelta(minutes=1)
    await worker.publish(
        [
            events.updated("s2", later, {"plan": "silver"}),
            events.updated("s4", later, {"plan": "gold"}),
            events.updated("s1", later, {"plan": None}),
        ]
    )
    await worker.settle()
    assert fold(membership(worker, tenant))[twin] == {"s1", "s3", "s4"}
    await check_static()
    # Time passes: the clicks leave "the last 2 days" for the twin only.
    await worker.advance(days=3)
    assert fold(membership(worker, tenant))[twin] == {"s4"}
    assert {
        r["contact_id"]
        for r in membership(worker, tenant)
        if r["segment_id"] == twin and r["reason"] == "clock"
    } == {"s1", "s3"}
    await check_static()
    assert [
        r for r in membership(worker, tenant) if r["segment_id"] == static
    ] == snapshot

    # Deleting it publishes an exit for each of its members.
    status, body = await worker.request(
        "DELETE", f"/v1/tenants/{tenant}/segments/{static}"
    )
    assert status == 200 and body["exited"] == 3, body
    await worker.settle()
    gone = [r for r in membership(worker, tenant) if r["segment_id"] == static][3:]
    assert summary(gone) == {(static, c, "exited", "definition") for c in taken}
    assert fold(membership(worker, tenant))[static] == set()
    for c in taken:
        assert static not in await segments_of(worker, tenant, c)
    check_alternation(membership(worker, tenant))


# --- the segment limit -------------------------------------------------------


async def test_the_segment_limit(
    worker: WorkerProcess, tenant: str, token_tenants: dict[str, list[str]]
) -> None:
    base = f"/v1/tenants/{tenant}"
    status, body = await worker.get(base)
    assert status == 200 and body["segment_limit"] == 10, body
    rule = all_of(cond("signal.links_clicked_7d", "gte", 1))
    for _ in range(10):
        await create(worker, tenant, rule)
    spec = {"name": "one too many", "kind": "active", "rule": rule}
    status, body = await worker.request("POST", f"{base}/segments", spec)
    assert status == 409, body
    assert body["error"]["code"] == "segment_limit"
    status, body = await worker.get(f"{base}/segments")
    assert len(body["segments"]) == 10

    # A tenant token may not raise its own limit.
    own = token_tenants["token-a"][0]
    status, before = await worker.get(f"/v1/tenants/{own}")
    assert status == 200
    status, body = await worker.request(
        "PUT", f"/v1/tenants/{own}", {"segment_limit": 50}, token="token-a"
    )
    assert status == 403, body
    status, after = await worker.get(f"/v1/tenants/{own}")
    assert after["segment_limit"] == before["segment_limit"]

    # The admin token raises it; fields left out keep their value.
    await worker.set_timezone(tenant, "Asia/Kolkata")
    await set_limit(worker, tenant, 12)
    status, body = await worker.get(base)
    assert body == {
        "tenant_id": tenant,
        "timezone": "Asia/Kolkata",
        "segment_limit": 12,
    }
    await create(worker, tenant, rule)
    await create(worker, tenant, rule)
    status, body = await worker.request("POST", f"{base}/segments", spec)
    assert status == 409, body
    status, body = await worker.get(f"{base}/segments")
    assert len(body["segments"]) == 12
    # Deleting one frees a place.
    status, _ = await worker.request(
        "DELETE", f"{base}/segments/{body['segments'][0]['id']}"
    )
    assert status == 200
    await create(worker, tenant, rule)


# --- preview -----------------------------------------------------------------


async def test_preview_matches_the_membership_the_segment_then_gets(
    worker: WorkerProcess, events: Events, tenant: str
) -> None:
    zone = "Pacific/Kiritimati"
    tz = ZoneInfo(zone)
    await worker.set_timezone(tenant, zone)
    now = await worker.now()
    rng = random.Random(5)
    people = [f"pv{i:02d}" for i in range(40)]
    batch = []
    for c in people:
        attributes = {
            "plan": rng.choice(["gold", "Silver", "bronze"]),
            "score": rng.randrange(100),
        }
        batch.append(events.updated(c, now - timedelta(hours=1), attributes))
        batch += [
            events.click(c, now - timedelta(minutes=rng.randrange(1, 60 * 24 * 40)))
            for _ in range(rng.randrange(4))
        ]
    await worker.publish(batch)
    await worker.settle()
    rule = any_of(
        [
            cond("attribute.plan", "in", ["gold", "silver"]),
            cond("attribute.score", "gte", 50),
        ],
        [cond("signal.links_clicked_30d", "gte", 2)],
    )
    path = f"/v1/tenants/{tenant}/segments/preview"
    status, small = await worker.request("POST", path, {"rule": rule, "limit": 5})
    assert status == 200, small
    status, full = await worker.request("POST", path, {"rule": rule, "limit": 1000})
    assert status == 200, full
    everyone = set(full["sample"])
    assert len(everyone) == len(full["sample"]) == full["count"] == small["count"]
    assert len(small["sample"]) == min(5, small["count"])
    assert set(small["sample"]) <= everyone
    today = now.astimezone(tz).date()
    bodies = await contacts(worker, tenant, people)
    assert everyone == {c for c, b in bodies.items() if matches(rule, b, today, tz)}
    assert 0 < len(everyone) < len(people)
    assert membership(worker, tenant) == []  # a preview publishes nothing

    body = await create(worker, tenant, rule)
    await worker.settle()
    assert body["backfill"]["entered"] == full["count"]
    assert fold(membership(worker, tenant))[body["id"]] == everyone
    assert await members_listed(worker, tenant, body["id"]) == everyone
    for c in small["sample"]:
        assert body["id"] in await segments_of(worker, tenant, c)


# --- rejected rules ----------------------------------------------------------


REJECTED = [
    pytest.param(
        all_of(cond("signal.no_such_signal", "is_set")),
        "rule.any[0].all[0].field",
        id="unknown-signal",
    ),
    pytest.param(
        all_of(
            cond("attribute.city", "is", "Pune"),
            cond("signal.links_clicked_7d", "in_last", 3),
        ),
        "rule.any[0].all[1]",
        id="operator-of-another-type",
    ),
    pytest.param(
        any_of(
            [cond("signal.links_clicked_7d", "gte", 1)],
            [cond("signal.last_link_clicked", "in_last", 0)],
        ),
        "rule.any[1].all[0].value",
        id="zero-days",
    ),
    pytest.param(
        all_of(cond("signal.last_link_clicked", "day_in_last", 367)),
        "rule.any[0].all[0].value",
        id="day-in-last-too-long",
    ),
    pytest.param(
        all_of(cond("signal.campaigns_received_7d", "between", [5, 1])),
        "rule.any[0].all[0].value",
        id="between-reversed",
    ),
    pytest.param(
        all_of(cond("signal.campaigns_received_7d", "gte", "5")),
        "rule.any[0].all[0].value",
        id="count-as-string",
    ),
    pytest.param(
        all_of(cond("attribute.signup", "before", "2026-02-30")),
        "rule.any[0].all[0].value",
        id="no-such-date",
    ),
    pytest.param(
        all_of(cond("signal.contact_source", "resembles", "x")),
        "rule.any[0].all[0].op",
        id="unknown-operator",
    ),
]


@pytest.mark.parametrize(("rule", "path"), REJECTED)
async def test_rejected_rules_point_at_the_failing_condition(
    worker: WorkerProcess, tenant: str, rule: Json, path: str
) -> None:
    base = f"/v1/tenants/{tenant}/segments"
    good = all_of(cond("signal.links_clicked_7d", "gte", 1))
    segment = (await create(worker, tenant, good, name="good"))["id"]
    status, body = await worker.request(
        "POST", base, {"name": "bad", "kind": "active", "rule": rule}
    )
    assert status == 422, body
    assert body["error"]["code"] == "invalid_rule"
    assert body["error"]["path"] == path
    assert body["error"]["message"]
    # An edit to the same rule is refused the same way and changes nothing.
    status, body = await worker.request(
        "PUT", f"{base}/{segment}", {"name": "bad", "kind": "active", "rule": rule}
    )
    assert status == 422, body
    assert body["error"]["path"] == path
    status, body = await worker.get(base)
    assert status == 200
    assert [(s["id"], s["version"], s["rule"]) for s in body["segments"]] == [
        (segment, 1, good)
    ]


async def test_preview_refuses_a_rule_with_the_path_of_the_failing_condition(
    worker: WorkerProcess, tenant: str
) -> None:
    """The preview body is {rule, limit}: paths start at its ``rule``."""
    for case in REJECTED[:3]:
        rule, path = case.values
        status, body = await worker.request(
            "POST",
            f"/v1/tenants/{tenant}/segments/preview",
            {"rule": rule, "limit": 5},
        )
        assert status == 422, body
        assert body["error"]["code"] == "invalid_rule"
        assert body["error"]["path"] == path, case.id


# --- members paging ----------------------------------------------------------


async def test_members_pages_add_up_to_the_fold(
    worker: WorkerProcess, events: Events, tenant: str
) -> None:
    now = await worker.now()
    people = [f"m{i:03d}" for i in range(200)]
    await worker.publish(
        [
            events.updated(c, now - timedelta(minutes=5), {"n": i})
            for i, c in enumerate(people)
        ]
    )
    await worker.settle()
    segment = (await create(worker, tenant, all_of(cond("attribute.n", "lt", 170))))[
        "id"
    ]
    await worker.settle()
    # Some leave and some join by events, so the index has moved since creation.
    await worker.publish(
        [events.updated(f"m{i:03d}", now, {"n": 500}) for i in range(0, 170, 17)]
        + [events.updated(f"m{i:03d}", now, {"n": 1}) for i in range(170, 200, 3)]
    )
    await worker.settle()
    folded = fold(membership(worker, tenant))[segment]
    expected = {f"m{i:03d}" for i in range(170) if i % 17} | {
        f"m{i:03d}" for i in range(170, 200, 3)
    }
    assert folded == expected
    pages = await member_pages(worker, tenant, segment, 25)
    assert len(pages) > 1, "one page for 170 members at limit 25"
    assert all(page["count"] == len(expected) for page in pages)
    listed = [c for page in pages for c in page["members"]]
    assert sorted(listed) == sorted(expected)


# --- anniversaries and months across a year end and 29 February --------------


async def test_anniversaries_and_months_across_a_year_end_and_29_february(
    worker: WorkerProcess, events: Events, tenant: str
) -> None:
    zone = "Pacific/Kiritimati"
    tz = ZoneInfo(zone)
    await worker.set_timezone(tenant, zone)
    local_now = (await worker.now()).astimezone(tz)
    year = (
        local_now.year
        if local_now.date() < date(local_now.year, 12, 30)
        else (local_now.year + 1)
    )
    await move_clock(worker, local(date(year, 12, 30), tz, 12))
    rules = {
        "signup_this_month": all_of(cond("attribute.signup", "day_in_this_month")),
        "signup_in_january": all_of(cond("attribute.signup", "day_in_month", 1)),
        "birthday_2_days": all_of(cond("attribute.birthday", "day_in_last", 2)),
        "birthday_today": all_of(cond("attribute.birthday", "day_in_last", 1)),
    }
    people: dict[str, Json] = {
        "dec": {"signup": f"{year - 3}-12-15"},
        "jan": {"signup": f"{year - 2}-01-20", "birthday": f"{year - 40}-01-01"},
        "feb": {"signup": f"{year - 1}-02-10"},
        "nye": {"birthday": f"{year - 30}-12-31"},
        "leap": {"birthday": "2024-02-29"},
        "feb28": {"birthday": "2023-02-28"},
        "mar1": {"birthday": "2023-03-01"},
    }
    ids = {
        name: (await create(worker, tenant, rule))["id"] for name, rule in rules.items()
    }
    start = await worker.now()
    await worker.publish(
        [events.updated(c, start - timedelta(minutes=1), a) for c, a in people.items()]
    )
    await worker.settle()

    def model(day: date) -> dict[str, set[str]]:
        """Segment id -> members on local date ``day``, by this file's evaluator."""
        return {
            ids[name]: {
                c
                for c, attributes in people.items()
                if matches(rule, {"signals": {}, "attributes": attributes}, day, tz)
            }
            for name, rule in rules.items()
        }

    async def check(day: date) -> None:
        expected = model(day)
        folded = fold(membership(worker, tenant))
        assert {k: v for k, v in folded.items() if v} == {
            k: v for k, v in expected.items() if v
        }, day
        for c in people:
            mine = {s for s, members in expected.items() if c in members}
            assert await segments_of(worker, tenant, c) == mine, (day, c)

    today = start.astimezone(tz).date()
    await check(today)
    leap_day = date(year + 1, 2, 29) if isleap(year + 1) else date(year + 1, 2, 28)
    days = [today + i * DAY for i in range(1, 5)]  # Dec 31 .. Jan 3
    days += [date(year + 1, 2, 27) + i * DAY for i in range(5)]  # Feb 27 .. Mar 3
    assert leap_day in days and date(year + 1, 1, 1) in days
    for day in days:
        # What changes, and at which local midnight, since the last step.
        expected: set[tuple[str, str, str, datetime]] = set()
        previous = model(today)
        d = today
        first_change: dict[tuple[str, str], date] = {}
        while d < day:
            d += DAY
            current = model(d)
            for segment, members in current.items():
                for c in members ^ previous[segment]:
                    assert (segment, c) not in first_change, "two changes in a step"
                    first_change[segment, c] = d
                    change = "entered" if c in members else "exited"
                    expected.add((segment, c, change, midnight(d, tz)))
            previous = current
        assert expected, f"the steps are chosen so that {day} changes something"
        before = len(membership(worker, tenant))
        await move_clock(worker, local(day, tz, 12))
        new = membership(worker, tenant)[before:]
        assert all(r["reason"] == "clock" and r["caused_by"] is None for r in new)
        got = {
            (r["segment_id"], r["contact_id"], r["change"], when(r["at"])) for r in new
        }
        assert got == expected, day
        await check(day)
        today = day
    history = membership(worker, tenant)
    assert {r["contact_id"] for r in history if r["reason"] == "clock"} == {
        "dec",
        "jan",
        "feb",
        "nye",
        "leap",
        "feb28",
        "mar1",
    }
    # 29 February: a day of its own in a leap year, 28 February otherwise.
    entered_today = {
        (r["contact_id"], when(r["at"]))
        for r in history
        if r["segment_id"] == ids["birthday_today"] and r["change"] == "entered"
    }
    assert ("leap", midnight(leap_day, tz)) in entered_today
    assert ("feb28", midnight(date(year + 1, 2, 28), tz)) in entered_today
    check_alternation(history)


# --- a long generated run ----------------------------------------------------


LONG_RULES: Mapping[str, Json] = {
    "clicked_gold": all_of(
        cond("signal.links_clicked_7d", "gte", 1),
        cond("attribute.plan", "in", ["gold", "platinum"]),
    ),
    "campaigned": any_of(
        [cond("signal.last_campaign_received", "in_last", 10)],
        [cond("signal.campaigns_received_30d", "between", [2, 4])],
    ),
    "quiet_whatsapp": all_of(
        cond("signal.last_message_from_contact", "not_in_last", 5),
        cond("signal.channel_type", "is", "WhatsApp"),
    ),
    "dates": any_of(
        [cond("attribute.signup", "day_in_this_month")],
        [cond("attribute.birthday", "day_in_last", 7)],
    ),
    "imported": any_of(
        [
            cond("signal.contact_source", "starts_with", "imp"),
            cond("signal.links_clicked_30d", "lt", 2),
        ],
        [
            cond("signal.last_link_clicked", "is_not_set"),
            cond("attribute.city", "is_set"),
            cond("attribute.plan", "not_in", ["silver"]),
        ],
    ),
}


async def test_a_long_generated_run_folds_to_an_independent_evaluation(
    worker: WorkerProcess, events: Events, tenant: str
) -> None:
    rng = random.Random(2026)
    # UTC+12:45 (+13:45 in summer): far from UTC, not a whole hour, and with
    # daylight saving time, which ends inside the run when it starts in March.
    zone = "Pacific/Chatham"
    tz = ZoneInfo(zone)
    await worker.set_timezone(tenant, zone)
    # Start ten local days before a month ends, so the run crosses into the next.
    now_local = (await worker.now()).astimezone(tz)
    first = date(now_local.year, now_local.month, 1)
    while True:
        first = (first + 32 * DAY).replace(day=1)
        start = local(first - 10 * DAY, tz, 15)
        if start > now_local:
            break
    await move_clock(worker, start)
    people = [f"lr{i:03d}" for i in range(300)]
    published: dict[str, set[str]] = defaultdict(set)

    def attributes() -> Json:
        pool: Json = {
            "plan": rng.choice(["gold", "Platinum", "silver", None]),
            "city": rng.choice(["Pune", "Delhi", None]),
            "signup": str(date(2024, 1, 1) + rng.randrange(900) * DAY),
            "birthday": rng.choice(
                ["2000-02-29", str(date(1960, 1, 1) + rng.randrange(16000) * DAY)]
            ),
        }
        keys = rng.sample(sorted(pool), rng.randint(1, len(pool)))
        return {k: pool[k] for k in keys}

    def random_event(contact: str, now: datetime, max_days: int) -> Json:
        at = now - timedelta(minutes=rng.randrange(1, 60 * 24 * max_days))
        kind = rng.choices(["click", "campaign", "inbound", "updated"], [3, 2, 2, 2])[0]
        if kind == "click":
            event = events.click(contact, at)
        elif kind == "campaign":
            event = events.campaign(contact, at, rng.choice(["c1", "c2"]))
        elif kind == "inbound":
            channel = rng.choice(["whatsapp", "WhatsApp", "sms", "instagram"])
            event = events.inbound(contact, at, channel=channel)
        else:
            source = rng.choice(["import", "Imported-CSV", "api", None])
            event = events.updated(contact, at, attributes(), source=source)
        published[contact].add(event["event_id"])
        return event

    batch = []
    for c in people:
        first_update = events.updated(
            c,
            start - timedelta(days=rng.randrange(1, 40)),
            attributes(),
            source=rng.choice(["import", "api", "IMPORTED"]),
        )
        published[c].add(first_update["event_id"])
        batch.append(first_update)
        batch += [random_event(c, start, 40) for _ in range(rng.randrange(5))]
    rng.shuffle(batch)
    await worker.publish(batch)
    await worker.settle()
    ids = {}
    for name, rule in LONG_RULES.items():
        ids[name] = (await create(worker, tenant, rule, name=name))["id"]
    await worker.settle()

    async def verify(label: str) -> None:
        now = await worker.now()
        today = now.astimezone(tz).date()
        folded = fold(membership(worker, tenant))
        bodies = await contacts(worker, tenant, people)
        for name, segment in ids.items():
            rule = LONG_RULES[name]
            expected = {c for c, b in bodies.items() if matches(rule, b, today, tz)}
            assert folded.get(segment, set()) == expected, (
                label,
                name,
                sorted(folded.get(segment, set()) ^ expected),
            )
            assert 0 < len(expected) < len(people), (label, name)
            listed = {c for c, b in bodies.items() if segment in b["segments"]}
            assert listed == expected, (label, name, sorted(listed ^ expected))
        for c, b in bodies.items():
            clicked = b["signals"]["links_clicked_7d"] >= 1
            recent = holds(cond("signal.last_link_clicked", "in_last", 7), b, today, tz)
            assert clicked == recent, (label, c, b["signals"])

    await verify("after creation")
    steps = [31, 47, 26, 70, 52, 99, 41, 60, 75]
    clock = start
    for i, hours in enumerate(steps):
        seen = len(membership(worker, tenant))
        batch = [random_event(rng.choice(people), clock, 15) for _ in range(100)]
        await worker.publish(batch)
        await worker.settle()
        for r in membership(worker, tenant)[seen:]:
            assert r["reason"] == "event" and when(r["at"]) == clock, r
            assert r["caused_by"] in published[r["contact_id"]], r
        seen = len(membership(worker, tenant))
        target = clock + timedelta(hours=hours, minutes=rng.randrange(60))
        await move_clock(worker, target)
        for r in membership(worker, tenant)[seen:]:
            assert r["reason"] == "clock" and r["caused_by"] is None, r
            at = when(r["at"])
            assert clock < at <= target, (r, clock, target)
            assert at.astimezone(tz).time() == datetime.min.time(), r
        clock = target
        if i % 2 == 1 or i == len(steps) - 1:
            await verify(f"step {i}")
    assert clock.astimezone(tz).month != start.astimezone(tz).month

    history = membership(worker, tenant)
    check_alternation(history)
    assert {r["reason"] for r in history} == {"definition", "event", "clock"}
    # The month turned: signups of the old month left, of the new one came.
    turn = {
        r["change"]
        for r in history
        if r["segment_id"] == ids["dates"]
        and r["reason"] == "clock"
        and when(r["at"]) == midnight(first, tz)
    }
    assert turn == {"entered", "exited"}
    assert {r["change"] for r in history if r["reason"] == "clock"} == {
        "entered",
        "exited",
    }
    folded = fold(history)
    for name, segment in ids.items():
        assert await members_listed(worker, tenant, segment, 40) == folded.get(
            segment, set()
        ), name
    # Last, as it is the one check that needs the raw topic: nothing published
    # twice. Without a crash, every change is published exactly once.
    check_no_replays(worker.changes(tenant))
