"""The fold of events into a profile, without services (pure logic)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import signals.profile as profile_module
from schemas.events import Event, parse_event
from signals.catalog import COUNT_SIGNALS, DATE_SIGNALS, SIGNAL_TYPES, SignalType
from signals.profile import (
    BUSINESS_TIMES_CAP,
    NativeView,
    Profile,
    ProfileView,
    _compress,
    _decompress,
    signals_json,
    stored_state,
    stored_view,
)
from signals.view import ContactView, PlainView
from signals.windows import SLOT_US, to_us
from tests.profile_fixtures import canonical

DATA = Path(__file__).parent / "data"
UTC_ZONE = ZoneInfo("UTC")
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
NOW_US = to_us(NOW)
HORIZON_US = 24 * 3600 * 1_000_000

#: The readers of stored profiles: every read-only test runs with each.
READERS = pytest.mark.parametrize("reader", ["python", "native"])


@contextmanager
def reading_with(reader: str) -> Iterator[None]:
    """Read-only views of stored profiles come from ``reader`` meanwhile."""
    installed = profile_module.NATIVE
    if reader == "native" and installed is None:
        pytest.skip("the compiled reader (native/) is not installed")
    profile_module.NATIVE = installed if reader == "native" else None
    try:
        yield
    finally:
        profile_module.NATIVE = installed


def view_class(reader: str) -> type[ContactView]:
    return NativeView if reader == "native" else ProfileView


def event(
    n: int, kind: str, at: datetime, data: dict[str, object], **extra: object
) -> Event:
    body = {
        "event_id": f"e{n:04d}",
        "tenant_id": "t",
        "contact_id": "c",
        "type": kind,
        "occurred_at": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "data": data,
        **extra,
    }
    return parse_event(orjson.dumps(body))


def fold(events: list[Event]) -> Profile:
    profile = Profile()
    for e in events:
        profile.apply(e, UTC_ZONE, NOW_US, HORIZON_US)
    return profile


def read(profile: Profile) -> dict[str, object]:
    view = profile.view("t", "c", UTC_ZONE)
    return {**signals_json(view, NOW.date()), "attributes": dict(view.attributes)}


KINDS = [
    "inbound",
    "reply",
    "ctwa",
    "outbound",
    "template",
    "campaign",
    "read",
    "click",
    "call",
    "update",
]


def build(n: int, kind: str, minutes_ago: int) -> Event:
    at = NOW - timedelta(minutes=minutes_ago)
    match kind:
        case "inbound":
            return event(n, "message.inbound", at, {"message_id": "m"}, channel="sms")
        case "reply":
            return event(
                n,
                "message.inbound",
                at,
                {"message_id": "m", "reply_to": {"campaign_id": f"c{n % 2}"}},
            )
        case "ctwa":
            return event(
                n,
                "message.inbound",
                at,
                {"message_id": "m", "ctwa": {"ad_source_url": f"u{n}"}},
            )
        case "outbound":
            return event(n, "message.outbound", at, {"message_id": "m"}, channel="wa")
        case "template":
            return event(
                n,
                "message.outbound",
                at,
                {"message_id": "m", "template": {"name": f"t{n}", "type": "x"}},
            )
        case "campaign":
            return event(
                n, "campaign.received", at, {"campaign_id": "c", "message_id": "m"}
            )
        case "read":
            return event(n, "message.read", at, {"message_id": "m", "campaign_id": "c"})
        case "click":
            return event(n, "link.clicked", at, {"url": "u"})
        case "call":
            return event(
                n, "call", at, {"direction": "inbound", "answered": n % 2 == 0}
            )
        case _:
            return event(
                n,
                "contact.updated",
                at,
                {
                    "attributes": {"a": n, f"k{n % 3}": None if n % 4 else n},
                    "source": f"s{n}",
                },
            )


histories = st.lists(
    st.tuples(st.sampled_from(KINDS), st.integers(0, 60 * 24 * 120)),
    min_size=1,
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(history=histories, seed=st.randoms())
def test_any_arrival_order_gives_the_same_signals(
    history: list[tuple[str, int]], seed: object
) -> None:
    events = [build(i, kind, ago) for i, (kind, ago) in enumerate(history)]
    shuffled = list(events)
    seed.shuffle(shuffled)  # type: ignore[attr-defined]
    assert read(fold(events)) == read(fold(shuffled))


@settings(max_examples=80, deadline=None)
@given(history=histories)
def test_replaying_every_event_changes_nothing(history: list[tuple[str, int]]) -> None:
    events = [build(i, kind, ago) for i, (kind, ago) in enumerate(history)]
    once = fold(events)
    twice = fold(events + events)
    assert read(once) == read(twice)
    assert not any(once.apply(e, UTC_ZONE, NOW_US, HORIZON_US) for e in events)


def test_ties_on_time_go_to_the_greater_event_id() -> None:
    at = NOW - timedelta(hours=1)
    a = event(1, "contact.updated", at, {"source": "first"})
    b = event(2, "contact.updated", at, {"source": "second"})
    assert read(fold([a, b]))["contact_source"] == "second"
    assert read(fold([b, a]))["contact_source"] == "second"


def test_null_removes_an_attribute_only_when_newer() -> None:
    at = NOW - timedelta(hours=2)
    set_city = event(1, "contact.updated", at, {"attributes": {"city": "Pune"}})
    remove = event(
        2, "contact.updated", at + timedelta(minutes=1), {"attributes": {"city": None}}
    )
    old_set = event(
        3, "contact.updated", at - timedelta(minutes=1), {"attributes": {"city": "Goa"}}
    )
    assert read(fold([set_city, remove, old_set]))["attributes"] == {}
    assert read(fold([old_set, remove]))["attributes"] == {}
    assert read(fold([remove, set_city]))["attributes"] == {}


def test_old_events_move_dates_but_no_counter() -> None:
    old = NOW - timedelta(days=120)
    profile = fold([event(1, "link.clicked", old, {"url": "u"})])
    signals = read(profile)
    assert signals["last_link_clicked"] == old.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert signals["links_clicked_90d"] == 0
    assert not profile.counters.get("l")


def test_deduplication_forgets_after_the_horizon() -> None:
    click = event(1, "link.clicked", NOW - timedelta(hours=30), {"url": "u"})
    profile = Profile()
    assert profile.apply(click, UTC_ZONE, NOW_US - 2 * HORIZON_US, HORIZON_US)
    assert not profile.apply(click, UTC_ZONE, NOW_US - HORIZON_US, HORIZON_US)
    other = event(2, "link.clicked", NOW - timedelta(hours=1), {"url": "u"})
    profile.apply(other, UTC_ZONE, NOW_US + 1, HORIZON_US)
    assert set(profile.seen) == {"e0002"}


@pytest.mark.parametrize("late_ctwa_hours", [1, 5, 9], ids=["early", "middle", "late"])
def test_first_business_reply_after_a_late_ctwa(late_ctwa_hours: int) -> None:
    base = NOW - timedelta(hours=20)
    replies = [
        event(
            10 + h, "message.outbound", base + timedelta(hours=h), {"message_id": "m"}
        )
        for h in (2, 4, 6, 8)
    ]
    ctwa = event(
        1,
        "message.inbound",
        base + timedelta(hours=late_ctwa_hours),
        {"message_id": "m", "ctwa": {"ad_source_url": "u"}},
    )
    expected = [h for h in (2, 4, 6, 8) if h >= late_ctwa_hours]
    got = read(fold([*replies, ctwa]))["first_business_reply_to_last_ctwa"]
    if expected:
        assert got == (base + timedelta(hours=expected[0])).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
    else:
        assert got is None


def test_memory_stays_bounded_with_many_events() -> None:
    profile = Profile()
    for day in range(400):
        now_us = NOW_US + day * 86_400 * 1_000_000
        for i in range(5):
            at = NOW + timedelta(days=day, minutes=i)
            n = day * 10 + i
            profile.apply(
                event(n, "link.clicked", at, {"url": "u"}), UTC_ZONE, now_us, HORIZON_US
            )
            profile.apply(
                event(n + 100_000, "message.outbound", at, {"message_id": "m"}),
                UTC_ZONE,
                now_us,
                HORIZON_US,
            )
    # One 15-minute slot a day holds the five clicks; 92 days of slots are kept.
    assert 90 <= len(set(profile.counters["l"])) <= 93
    # Ids of the last 24 hours only: today's and yesterday's ten events each.
    assert len(profile.seen) <= 20
    assert len(profile.business_times) <= BUSINESS_TIMES_CAP
    assert len(profile.encode()) < 4096


@settings(max_examples=100, deadline=None)
@given(history=histories, fraction=st.integers(0, 999_999))
def test_the_stored_form_reads_back_identically(
    history: list[tuple[str, int]], fraction: int
) -> None:
    events = [build(i, kind, ago) for i, (kind, ago) in enumerate(history)]
    profile = fold(events)
    profile.dates["mc"] = profile.dates.get("mc", NOW_US) + fraction
    profile.business_times = tuple(sorted({*profile.business_times, NOW_US - fraction}))
    profile.membership = {"seg_a": 3, "seg_b": 4}
    profile.next_wake_us = NOW_US + 86_400 * 1_000_000
    again = Profile.decode(profile.encode(), profile.version)
    assert again == profile
    assert again.encode() == profile.encode()


def everything_rules_read(view: ContactView, tz: ZoneInfo) -> dict[str, object]:
    """What a rule can ask a view, on several days (windows slide with them)."""
    out: dict[str, object] = {"attributes": dict(view.attributes)}
    for back in (-1, 0, 6, 29, 89):
        today = (NOW - timedelta(days=back)).astimezone(tz).date()
        out[f"signals {back}"] = signals_json(view, today)
        out[f"days {back}"] = {
            name: list(view.counted_days(name, today)) for name in COUNT_SIGNALS
        }
    out["local dates"] = {name: view.local_date(name, tz) for name in DATE_SIGNALS}
    out["strings one by one"] = {
        name: view.string(name)
        for name, kind in SIGNAL_TYPES.items()
        if kind is SignalType.STRING
    }
    out["attributes one by one"] = {
        name: view.attribute(name)
        for name in [*view.attributes, "k0", "k1", "k2", "city", "never_set"]
    }
    return out


@READERS
@settings(max_examples=100, deadline=None)
@given(
    history=histories,
    zone_name=st.sampled_from(["UTC", "Asia/Kolkata", "America/Sao_Paulo"]),
)
def test_the_read_only_view_of_a_stored_profile_reads_the_same(
    history: list[tuple[str, int]], zone_name: str, reader: str
) -> None:
    """Preview and snapshot read stored profiles without building them
    (``stored_view``); a rule must see exactly what it sees on the profile,
    whichever reader reads it."""
    tz = ZoneInfo(zone_name)
    profile = fold([build(i, kind, ago) for i, (kind, ago) in enumerate(history)])
    profile.membership = {"s1": 3, "s2": 4}
    profile.next_wake_us, profile.next_wake_segment = NOW_US, "s1"
    held = profile.view("t", "c", tz)
    with reading_with(reader):
        read_only = stored_view(profile.encode(), "t", "c", tz)
        state = stored_state(profile.encode(), "t", "c", tz)
    assert isinstance(read_only, view_class(reader))
    assert everything_rules_read(read_only, tz) == everything_rules_read(held, tz)
    assert everything_rules_read(state.view, tz) == everything_rules_read(held, tz)
    assert state.membership == profile.membership
    assert (state.next_wake_us, state.next_wake_segment) == (NOW_US, "s1")
    # And both answer as a view over plain mappings (instants converted with
    # ``astimezone``, counts summed per local day) answers.
    plain = PlainView(
        "t",
        "c",
        dates=dict(held.dates),
        strings=dict(held.strings),
        counter_days=dict(held.counter_days),
        attributes=dict(held.attributes),
    )
    assert everything_rules_read(plain, tz) == everything_rules_read(held, tz)


@READERS
def test_documents_stored_in_format_2_still_read(reader: str) -> None:
    """Profiles written by the previous layout (DEFLATE, packed seconds,
    interned ids) read back with the same meaning, and write back in the
    current layout without losing any of it."""
    fixtures = orjson.loads((DATA / "profiles_format2.json").read_bytes())
    assert fixtures
    for item in fixtures:
        stored = base64.b64decode(item["stored"])
        assert stored[:1] == b"z"  # really the old layout
        tz = ZoneInfo(item["timezone"])
        today = date.fromisoformat(item["today"])
        profile = Profile.decode(stored, item["version"])
        assert canonical(profile, tz, today) == item["canonical"]
        again = Profile.decode(profile.encode(), item["version"])
        assert canonical(again, tz, today) == item["canonical"]
        assert again == profile
        with reading_with(reader):  # the compiled reader leaves layout 2 alone
            read_only = stored_view(stored, "t", "c", tz)
        assert isinstance(read_only, ProfileView)
        assert signals_json(read_only, today) == item["canonical"]["signals"]
        assert dict(read_only.attributes) == item["canonical"]["attributes"]


@READERS
def test_documents_stored_in_format_3_still_read(reader: str) -> None:
    """Profiles written by the one-line layout 3 read back with the same
    meaning, through the fold's decode and the walks' read-only view, and
    write back in the current layout without losing any of it."""
    fixtures = orjson.loads((DATA / "profiles_format3.json").read_bytes())
    assert fixtures
    for item in fixtures:
        stored = base64.b64decode(item["stored"])
        assert b"\n" not in _decompress(stored)  # really the one-line layout
        tz = ZoneInfo(item["timezone"])
        today = date.fromisoformat(item["today"])
        profile = Profile.decode(stored, item["version"])
        assert canonical(profile, tz, today) == item["canonical"]
        again = profile.encode()
        assert b"\n" in _decompress(again)
        assert Profile.decode(again, item["version"]) == profile
        for form in (stored, again):
            with reading_with(reader):
                read_only = stored_state(form, "t", "c", tz)
            assert isinstance(read_only.view, view_class(reader))
            assert signals_json(read_only.view, today) == item["canonical"]["signals"]
            assert dict(read_only.view.attributes) == item["canonical"]["attributes"]
            assert read_only.membership == profile.membership
            assert read_only.next_wake_us == profile.next_wake_us
            assert read_only.next_wake_segment == profile.next_wake_segment


def test_the_current_layout_stores_no_more_bytes_than_layout_3() -> None:
    """Layout 4's second line is paid for by its dictionary: the same
    profiles take no more room than in layout 3 (the memory per contact is a
    target, and a size class of Redis's allocator is a few bytes away)."""
    fixtures = orjson.loads((DATA / "profiles_format3.json").read_bytes())
    before = after = 0
    for item in fixtures:
        stored = base64.b64decode(item["stored"])
        before += len(stored)
        after += len(Profile.decode(stored, item["version"]).encode())
    assert after <= before


@settings(max_examples=200, deadline=None)
@given(
    offsets=st.lists(st.integers(0, 95 * 96), min_size=0, max_size=40),
    zone_name=st.sampled_from(
        [
            "UTC",
            "Asia/Kolkata",
            "America/Sao_Paulo",
            "Pacific/Kiritimati",
            "Pacific/Pago_Pago",
            "Europe/London",
            "Australia/Lord_Howe",
        ]
    ),
    back=st.integers(-3, 95),
)
def test_counts_by_slot_bisection_equal_counts_by_local_day(
    offsets: list[int], zone_name: str, back: int
) -> None:
    """The profile's fast count (bisect the ascending slots from the window's
    first slot) equals counting per local day, as any other view does."""
    tz = ZoneInfo(zone_name)
    last = NOW_US // SLOT_US
    profile = Profile(counters={"l": sorted(last - o for o in offsets)})
    fast = profile.view("t", "c", tz)
    slow = PlainView("t", "c", counter_days=fast.counter_days)
    today = (NOW - timedelta(days=back)).astimezone(tz).date()
    for days in (7, 30, 90):
        name = f"links_clicked_{days}d"
        assert fast.count(name, today) == slow.count(name, today)
        assert list(fast.counted_days(name, today)) == list(
            slow.counted_days(name, today)
        )


@READERS
def test_read_only_views_read_any_attribute_value_and_long_documents(
    reader: str,
) -> None:
    """Every JSON scalar an attribute can hold reads back as the fold holds
    it, and a document far longer than a reader's first buffer (thousands of
    deduplication ids) reads whole."""
    attributes: dict[str, object] = {
        "text": 'naïve "quoted" \\ back\u2603 😀 \u0000',
        "smallest": -(2**63),
        "largest": 2**64 - 1,
        "tenth": 0.1,
        "huge": 1e300,
        "tiny": -2.5e-308,
        "yes": True,
        "no": False,
        "gone": None,
    }
    events = [event(0, "contact.updated", NOW, {"attributes": attributes})]
    events += [build(n, "click", n % 600) for n in range(1, 2_000)]
    profile = fold(events)
    stored = profile.encode()
    assert len(_decompress(stored)) > 32 * 1024
    with reading_with(reader):
        view = stored_view(stored, "t", "c", UTC_ZONE)
    assert isinstance(view, view_class(reader))
    expected = {k: v for k, v in attributes.items() if v is not None}
    assert dict(view.attributes) == expected
    for name, value in attributes.items():
        got = view.attribute(name)
        assert got == value and type(got) is type(value), name
    assert view.count("links_clicked_7d", NOW.date()) == 1_999


def test_the_compiled_reader_refuses_a_damaged_document() -> None:
    """A document the compiled reader cannot read is an error that says so,
    never a view of nothing."""
    with reading_with("native"):
        with pytest.raises(ValueError, match="not a readable stored profile"):
            stored_view(b"x\x00damaged", "t", "c", UTC_ZONE)
        good = fold([build(1, "click", 5)]).encode()
        with pytest.raises(ValueError, match="not a readable stored profile"):
            stored_view(good[:-3], "t", "c", UTC_ZONE)


def _read_natively(stored: bytes) -> None:
    """Read ``stored`` with the compiled reader and ask the view everything."""
    with reading_with("native"):
        view = stored_view(stored, "t", "c", UTC_ZONE)
        state = stored_state(stored, "t", "c", UTC_ZONE)
    signals_json(view, NOW.date())
    dict(view.attributes), dict(state.membership), state.next_wake_us


GOOD = fold(
    [
        event(0, "contact.updated", NOW, {"attributes": {"plan": "gold"}}),
        build(1, "click", 5),
        build(2, "click", 50),
    ]
).encode()


@settings(max_examples=300, deadline=None, database=None)
@given(
    damage=st.one_of(
        # Anything after a marker the reader takes.
        st.tuples(st.sampled_from([b"x", b"y"]), st.binary(max_size=300)).map(
            lambda t: t[0] + t[1]
        ),
        # A real document cut short or with one byte changed.
        st.integers(1, len(GOOD) - 1).map(lambda n: GOOD[:n]),
        st.tuples(st.integers(1, len(GOOD) - 1), st.integers(0, 255)).map(
            lambda t: GOOD[: t[0]] + bytes([t[1]]) + GOOD[t[0] + 1 :]
        ),
        # A sound frame around bytes that are not a profile.
        st.binary(max_size=200).map(_compress),
    )
)
def test_the_compiled_reader_fails_only_with_value_error(damage: bytes) -> None:
    """Whatever a damaged document holds, the compiled reader answers or
    raises ``ValueError``: never a crash, a panic (which Python could not
    catch as an ``Exception``) or another error type."""
    if profile_module.NATIVE is None:
        pytest.skip("the compiled reader (native/) is not installed")
    with suppress(ValueError):
        _read_natively(damage)


@pytest.mark.parametrize(
    "document",
    [
        b'{"f":4,"c":{"lc":[9223372036854775807,1]}}',
        b'{"f":4,"c":{"lc":[-9223372036854775808,-1]}}',
        b'{"f":4,"l":{"s":[1]}}',
        b'{"f":4,"t":{"lc":"soon"}}',
        b'{"f":2}',
        b"[]",
        b"",
    ],
    ids=[
        "counter-overflows",
        "counter-underflows",
        "short-stamp",
        "date-not-a-number",
        "old-layout",
        "not-an-object",
        "empty",
    ],
)
def test_the_compiled_reader_refuses_json_that_is_not_a_profile(
    document: bytes,
) -> None:
    with pytest.raises(ValueError, match="not a readable stored profile"):
        _read_natively(_compress(document))


def test_the_compiled_reader_refuses_a_frame_past_its_size_limit() -> None:
    """A frame that inflates beyond the largest document read (64 MiB) is an
    error, not an allocation of whatever the frame claims."""
    huge = _compress(b'{"f":4,"a":{"x":[0,"e","' + b"a" * (65 * 1024 * 1024) + b'"]}}')
    with pytest.raises(ValueError, match="not a readable stored profile"):
        _read_natively(huge)
