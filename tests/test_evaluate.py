"""Rule evaluation (contract section 3) and the prediction of when answers change.

Examples pin every operator down on signals and attributes; two properties
check the rest on generated contacts: the counter/``in_last`` equivalence of
contract section 2, and ``next_change`` against day-by-day evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segments.evaluate import HORIZON_DAYS, CompiledRule, compile_rule, signal_fields
from segments.rules import parse_rule
from signals.catalog import Counter
from signals.view import AttributeValue, ContactView, PlainView

TODAY = date(2026, 12, 3)
UTC_ZONE = ZoneInfo("UTC")
KIRITIMATI = ZoneInfo("Pacific/Kiritimati")  # UTC+14
PAGO_PAGO = ZoneInfo("Pacific/Pago_Pago")  # UTC-11
NEW_YORK = ZoneInfo("America/New_York")

Cond = tuple[str, str, Any]


def compiled(*groups: Sequence[Cond]) -> CompiledRule:
    rule = {
        "any": [
            {"all": [{"field": f, "op": op, "value": v} for f, op, v in group]}
            for group in groups
        ]
    }
    return compile_rule(parse_rule(rule))


def view(
    dates: Mapping[str, datetime] | None = None,
    strings: Mapping[str, str] | None = None,
    counts: Mapping[Counter, list[tuple[date, int]]] | None = None,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> ContactView:
    return PlainView(
        "tenant",
        "contact",
        dates=dates or {},
        strings=strings or {},
        counter_days=counts or {},
        attributes=attributes or {},
    )


def noon(day: date) -> datetime:
    return datetime.combine(day, time(12), tzinfo=UTC)


def days_ago(n: int) -> date:
    return TODAY - timedelta(days=n)


def holds(
    condition: Cond, contact: ContactView, today: date = TODAY, tz: ZoneInfo = UTC_ZONE
) -> bool:
    return compiled([condition]).matches(contact, today, tz)


def clicked(day: date | None) -> ContactView:
    return view(dates={} if day is None else {"last_link_clicked": noon(day)})


# --- date signals -------------------------------------------------------------

CLICK = "signal.last_link_clicked"


@pytest.mark.parametrize(
    ("op", "value", "day", "expected"),
    [
        pytest.param("in_last", 7, TODAY, True, id="in_last-today"),
        pytest.param("in_last", 7, days_ago(6), True, id="in_last-oldest-day"),
        pytest.param("in_last", 7, days_ago(7), False, id="in_last-one-too-old"),
        pytest.param("in_last", 1, days_ago(1), False, id="in_last-1-yesterday"),
        pytest.param("in_last", 7, TODAY + timedelta(3), True, id="in_last-future"),
        pytest.param("in_last", 7, None, False, id="in_last-unset"),
        pytest.param("not_in_last", 7, days_ago(7), True, id="not_in_last-old"),
        pytest.param("not_in_last", 7, days_ago(6), False, id="not_in_last-recent"),
        pytest.param("not_in_last", 7, None, False, id="not_in_last-unset"),
        pytest.param("day_in_last", 7, date(1990, 11, 27), True, id="dil-oldest"),
        pytest.param("day_in_last", 7, date(1990, 12, 3), True, id="dil-today"),
        pytest.param("day_in_last", 7, date(1990, 11, 26), False, id="dil-too-old"),
        pytest.param("day_in_last", 7, date(1990, 12, 4), False, id="dil-tomorrow"),
        pytest.param("day_in_last", 366, date(1990, 12, 4), True, id="dil-366"),
        pytest.param("day_in_last", 7, None, False, id="dil-unset"),
        pytest.param("day_in_this_month", None, date(2001, 12, 31), True, id="dtm"),
        pytest.param("day_in_this_month", None, date(2026, 11, 30), False, id="dtm-no"),
        pytest.param("day_in_this_month", None, None, False, id="dtm-unset"),
        pytest.param("day_in_month", 12, date(2001, 12, 31), True, id="dim"),
        pytest.param("day_in_month", 11, date(2001, 12, 31), False, id="dim-no"),
        pytest.param("day_in_month", 12, None, False, id="dim-unset"),
        pytest.param("before", "2026-12-01", date(2026, 11, 30), True, id="before"),
        pytest.param("before", "2026-12-01", date(2026, 12, 1), False, id="before-on"),
        pytest.param("before", "2026-12-01", None, False, id="before-unset"),
        pytest.param("after", "2026-12-01", date(2026, 12, 2), True, id="after"),
        pytest.param("after", "2026-12-01", date(2026, 12, 1), False, id="after-on"),
        pytest.param("after", "2026-12-01", None, False, id="after-unset"),
        pytest.param("on", "2026-12-01", date(2026, 12, 1), True, id="on"),
        pytest.param("on", "2026-12-01", date(2026, 12, 2), False, id="on-no"),
        pytest.param("on", "2026-12-01", None, False, id="on-unset"),
        pytest.param("is_set", None, date(2026, 12, 2), True, id="is_set"),
        pytest.param("is_set", None, None, False, id="is_set-unset"),
        pytest.param("is_not_set", None, date(2026, 12, 2), False, id="is_not_set"),
        pytest.param("is_not_set", None, None, True, id="is_not_set-unset"),
    ],
)
def test_date_signal(op: str, value: Any, day: date | None, expected: bool) -> None:
    assert holds((CLICK, op, value), clicked(day)) is expected


@pytest.mark.parametrize(
    ("value", "day", "today", "expected"),
    [
        pytest.param(7, date(2000, 12, 30), date(2027, 1, 2), True, id="dec-30"),
        pytest.param(7, date(2000, 12, 27), date(2027, 1, 2), True, id="dec-27"),
        pytest.param(7, date(2000, 12, 26), date(2027, 1, 2), False, id="dec-26"),
        pytest.param(7, date(2000, 1, 3), date(2026, 12, 31), False, id="jan-3"),
        pytest.param(1, date(2000, 12, 31), date(2027, 1, 1), False, id="new-year"),
        pytest.param(366, date(2000, 1, 1), date(2026, 12, 31), True, id="all-year"),
        # 29 February is 28 February in common years, and only then.
        pytest.param(1, date(2000, 2, 29), date(2027, 2, 28), True, id="29-on-28"),
        pytest.param(1, date(2000, 2, 29), date(2027, 3, 1), False, id="29-on-mar-1"),
        pytest.param(2, date(2000, 2, 29), date(2027, 3, 1), True, id="29-window-2"),
        pytest.param(1, date(2000, 2, 29), date(2028, 2, 29), True, id="29-leap"),
        pytest.param(1, date(2000, 2, 29), date(2028, 2, 28), False, id="29-leap-28"),
        pytest.param(1, date(2001, 2, 28), date(2028, 2, 29), False, id="28-leap-29"),
        pytest.param(1, date(2001, 2, 28), date(2027, 2, 28), True, id="28-common"),
        pytest.param(1, date(2001, 3, 1), date(2028, 2, 29), False, id="mar-1-leap"),
    ],
)
def test_day_in_last_ignores_the_year(
    value: int, day: date, today: date, expected: bool
) -> None:
    assert holds((CLICK, "day_in_last", value), clicked(day), today) is expected


def test_day_in_month_of_29_february_is_february() -> None:
    assert holds((CLICK, "day_in_month", 2), clicked(date(2000, 2, 29)))


@pytest.mark.parametrize(
    ("instant", "tz", "local"),
    [
        pytest.param("2026-12-02T12:30:00Z", KIRITIMATI, date(2026, 12, 3), id="+14"),
        pytest.param("2026-12-02T09:59:59Z", KIRITIMATI, date(2026, 12, 2), id="+14-"),
        pytest.param("2026-12-03T05:00:00Z", PAGO_PAGO, date(2026, 12, 2), id="-11"),
        pytest.param("2026-12-03T11:00:00Z", PAGO_PAGO, date(2026, 12, 3), id="-11+"),
        pytest.param("2026-12-03T04:59:00Z", NEW_YORK, date(2026, 12, 2), id="-5"),
    ],
)
def test_date_signal_compares_local_dates(
    instant: str, tz: ZoneInfo, local: date
) -> None:
    contact = view(dates={"last_link_clicked": datetime.fromisoformat(instant)})

    assert holds((CLICK, "on", local.isoformat()), contact, tz=tz)
    assert holds((CLICK, "in_last", 1), contact, local, tz)
    assert not holds((CLICK, "in_last", 1), contact, local + timedelta(1), tz)
    assert holds((CLICK, "day_in_last", 1), contact, local, tz)


def test_in_last_1_means_the_local_today_far_east_of_utc() -> None:
    # 23:30 UTC on 2 December is already 13:30 on 3 December in Kiritimati.
    contact = view(
        dates={"last_link_clicked": datetime(2026, 12, 2, 23, 30, tzinfo=UTC)}
    )

    assert holds((CLICK, "in_last", 1), contact, date(2026, 12, 3), KIRITIMATI)
    assert not holds((CLICK, "in_last", 1), contact, date(2026, 12, 3), UTC_ZONE)
    assert holds((CLICK, "day_in_this_month", None), contact, date(2026, 12, 3))


# --- count signals -----------------------------------------------------------

CLICKS = {
    Counter.LINKS_CLICKED: [
        (TODAY, 2),
        (days_ago(6), 1),
        (days_ago(7), 5),
        (days_ago(40), 3),
    ]
}  # links_clicked_7d = 3, _30d = 8, _90d = 11


@pytest.mark.parametrize(
    ("field", "op", "value", "expected"),
    [
        pytest.param("links_clicked_7d", "eq", 3, True, id="eq"),
        pytest.param("links_clicked_30d", "eq", 3, False, id="eq-other-window"),
        pytest.param("links_clicked_90d", "ne", 11, False, id="ne"),
        pytest.param("links_clicked_90d", "ne", 10, True, id="ne-true"),
        pytest.param("links_clicked_30d", "gt", 7, True, id="gt"),
        pytest.param("links_clicked_30d", "gt", 8, False, id="gt-equal"),
        pytest.param("links_clicked_7d", "gte", 3, True, id="gte-equal"),
        pytest.param("links_clicked_7d", "gte", 4, False, id="gte"),
        pytest.param("links_clicked_90d", "lt", 12, True, id="lt"),
        pytest.param("links_clicked_90d", "lt", 11, False, id="lt-equal"),
        pytest.param("links_clicked_7d", "lte", 3, True, id="lte-equal"),
        pytest.param("links_clicked_7d", "lte", 2, False, id="lte"),
        pytest.param("links_clicked_30d", "between", [8, 8], True, id="between-point"),
        pytest.param("links_clicked_30d", "between", [1, 7], False, id="between-low"),
        pytest.param("links_clicked_30d", "between", [9, 20], False, id="between-up"),
        pytest.param("campaigns_received_7d", "eq", 0, True, id="empty-is-0"),
        pytest.param("campaigns_received_7d", "gte", 1, False, id="empty-gte-1"),
    ],
)
def test_count_signal(field: str, op: str, value: Any, expected: bool) -> None:
    assert holds((f"signal.{field}", op, value), view(counts=CLICKS)) is expected


def test_count_window_moves_with_today() -> None:
    contact = view(counts=CLICKS)
    condition = ("signal.links_clicked_7d", "eq", 2)

    assert not holds(condition, contact, TODAY)
    assert holds(condition, contact, TODAY + timedelta(1))


# --- string signals ----------------------------------------------------------

CHANNEL = "signal.channel_type"


@pytest.mark.parametrize(
    ("op", "value", "actual", "expected"),
    [
        pytest.param("is", "whatsapp", "WhatsApp", True, id="is-any-case"),
        pytest.param("is", "sms", "WhatsApp", False, id="is-other"),
        pytest.param("is", "strasse", "STRAẞE", True, id="is-casefold"),
        pytest.param("is", "whats", "WhatsApp", False, id="is-not-prefix"),
        pytest.param("is", "x", None, False, id="is-unset"),
        pytest.param("is_not", "WHATSAPP", "whatsapp", False, id="is_not-same"),
        pytest.param("is_not", "sms", "whatsapp", True, id="is_not-other"),
        pytest.param("is_not", "sms", None, True, id="is_not-unset"),
        pytest.param("in", ["sms", "WHATSAPP"], "WhatsApp", True, id="in"),
        pytest.param("in", ["sms"], "WhatsApp", False, id="in-no"),
        pytest.param("in", ["sms"], None, False, id="in-unset"),
        pytest.param("not_in", ["SMS"], "sms", False, id="not_in-in"),
        pytest.param("not_in", ["sms"], "WhatsApp", True, id="not_in"),
        pytest.param("not_in", ["sms"], None, True, id="not_in-unset"),
        pytest.param("contains", "APP", "WhatsApp", True, id="contains"),
        pytest.param("contains", "gram", "WhatsApp", False, id="contains-no"),
        pytest.param("contains", "a", None, False, id="contains-unset"),
        pytest.param("not_contains", "APP", "WhatsApp", False, id="not_contains-in"),
        pytest.param("not_contains", "gram", "WhatsApp", True, id="not_contains"),
        pytest.param("not_contains", "a", None, True, id="not_contains-unset"),
        pytest.param("starts_with", "WHAT", "WhatsApp", True, id="starts_with"),
        pytest.param("starts_with", "app", "WhatsApp", False, id="starts_with-no"),
        pytest.param("starts_with", "w", None, False, id="starts_with-unset"),
        pytest.param("is_set", None, "sms", True, id="is_set"),
        pytest.param("is_set", None, None, False, id="is_set-unset"),
        pytest.param("is_not_set", None, "sms", False, id="is_not_set"),
        pytest.param("is_not_set", None, None, True, id="is_not_set-unset"),
    ],
)
def test_string_signal(op: str, value: Any, actual: str | None, expected: bool) -> None:
    contact = view(strings={} if actual is None else {"channel_type": actual})

    assert holds((CHANNEL, op, value), contact) is expected


# --- attributes --------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "value", "actual", "expected"),
    [
        # Numbers take the count operators, numerically.
        pytest.param("eq", 3, 3, True, id="int-eq"),
        pytest.param("eq", 3, 3.0, True, id="float-eq-int"),
        pytest.param("ne", 3, 3.5, True, id="float-ne"),
        pytest.param("gt", 2, 2.5, True, id="float-gt"),
        pytest.param("lt", 3, 2.5, True, id="float-lt"),
        pytest.param("gte", 3, 2.5, False, id="float-gte"),
        pytest.param("lte", -1, -1, True, id="negative-lte"),
        pytest.param("between", [2, 3], 2.5, True, id="float-between"),
        pytest.param("between", [2, 3], 3.5, False, id="float-between-above"),
        pytest.param("eq", 3, "3", False, id="string-eq-mismatch"),
        pytest.param("ne", 3, "3", False, id="string-ne-mismatch"),
        pytest.param("eq", 1, True, False, id="bool-eq-mismatch"),
        pytest.param("ne", 1, True, False, id="bool-ne-mismatch"),
        pytest.param("gte", 0, None, False, id="gte-unset"),
        pytest.param("ne", 0, None, False, id="ne-unset"),
        # Strings take the string operators, ignoring case.
        pytest.param("is", "pune", "Pune", True, id="str-is"),
        pytest.param("in", ["PUNE", "Mumbai"], "pune", True, id="str-in"),
        pytest.param("starts_with", "PU", "Pune", True, id="str-starts_with"),
        pytest.param("is", "3", 3, False, id="int-is-mismatch"),
        pytest.param("is", "true", True, False, id="bool-is-mismatch"),
        pytest.param("is_not", "x", 3, False, id="int-is_not-mismatch"),
        pytest.param("not_in", ["x"], 3.5, False, id="float-not_in-mismatch"),
        pytest.param("not_contains", "x", False, False, id="bool-not_contains"),
        pytest.param("is_not", "x", None, True, id="is_not-unset"),
        pytest.param("not_in", ["x"], None, True, id="not_in-unset"),
        pytest.param("not_contains", "x", None, True, id="not_contains-unset"),
        pytest.param("contains", "x", None, False, id="contains-unset"),
        # Presence, whatever the type.
        pytest.param("is_set", None, True, True, id="bool-is_set"),
        pytest.param("is_set", None, False, True, id="false-is_set"),
        pytest.param("is_set", None, 0, True, id="zero-is_set"),
        pytest.param("is_set", None, "", True, id="empty-string-is_set"),
        pytest.param("is_not_set", None, False, False, id="bool-is_not_set"),
        pytest.param("is_set", None, None, False, id="is_set-unset"),
        pytest.param("is_not_set", None, None, True, id="is_not_set-unset"),
        # Date operators take ISO dates and datetimes with an offset only.
        pytest.param("in_last", 3, 3, False, id="int-in_last-mismatch"),
        pytest.param("is_set", None, "soon", True, id="non-date-is_set"),
        pytest.param("in_last", 3, "soon", False, id="non-date-in_last"),
        pytest.param("in_last", 3, True, False, id="bool-in_last-mismatch"),
    ],
)
def test_attribute_by_json_type(
    op: str, value: Any, actual: AttributeValue | None, expected: bool
) -> None:
    contact = view(attributes={} if actual is None else {"a": actual})

    assert holds(("attribute.a", op, value), contact) is expected


@pytest.mark.parametrize(
    ("op", "value", "actual", "expected"),
    [
        pytest.param("on", "2026-12-01", "2026-12-01", True, id="date-on"),
        pytest.param("before", "2000-01-01", "1990-12-01", True, id="date-before"),
        pytest.param("after", "2000-01-01", "1990-12-01", False, id="date-after"),
        pytest.param("in_last", 3, "2026-12-01", True, id="date-in_last"),
        pytest.param("not_in_last", 2, "2026-12-01", True, id="date-not_in_last"),
        pytest.param("day_in_last", 7, "1990-12-01", True, id="birthday"),
        pytest.param("day_in_last", 7, "1990-02-29", False, id="not-a-date"),
        pytest.param("day_in_this_month", None, "1990-12-25", True, id="this-month"),
        pytest.param("day_in_month", 12, "1990-12-25", True, id="month"),
        pytest.param("starts_with", "1990-", "1990-12-25", True, id="still-a-string"),
        pytest.param("on", "2026-12-01", "2026-12-01T23:30:00Z", True, id="utc"),
        pytest.param("on", "2026-12-01", "2026-12-01T23:30:00+00:00", True, id="+0"),
        pytest.param("on", "2026-12-02", "2026-12-01T20:00:00-05:00", True, id="-5"),
        pytest.param("on", "2026-12-01", "2026-12-01 23:30:00.250Z", True, id="space"),
        pytest.param("on", "2026-12-01", "2026-12-01T23:30:00", False, id="naive"),
        pytest.param("on", "2026-12-01", "20261201", False, id="basic-format"),
        pytest.param("on", "2026-12-01", "2026-12-01x", False, id="trailing"),
        pytest.param("on", "2026-12-01", "Monday 2026-12-01", False, id="prose"),
        pytest.param("on", "2026-12-01", "2026-13-01", False, id="no-such-month"),
        pytest.param("in_last", 1, "9999-12-31T23:00:00-05:00", False, id="overflow"),
    ],
)
def test_attribute_date_strings(
    op: str, value: Any, actual: str, expected: bool
) -> None:
    contact = view(attributes={"d": actual})

    assert holds(("attribute.d", op, value), contact) is expected


def test_attribute_datetime_converts_to_the_tenant_local_date() -> None:
    contact = view(attributes={"d": "2026-12-02T12:30:00Z"})

    assert holds(("attribute.d", "on", "2026-12-03"), contact, tz=KIRITIMATI)
    assert holds(("attribute.d", "on", "2026-12-02"), contact, tz=PAGO_PAGO)


def test_attribute_date_without_time_is_taken_as_a_local_date() -> None:
    contact = view(attributes={"d": "2026-12-03"})

    for tz in (KIRITIMATI, PAGO_PAGO, UTC_ZONE):
        assert holds(("attribute.d", "on", "2026-12-03"), contact, tz=tz)


# --- groups and rules ----------------------------------------------------------

RECENT = (CLICK, "in_last", 7)
PUNE = ("attribute.city", "is", "pune")
SMS = (CHANNEL, "is", "sms")


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        pytest.param([[RECENT, PUNE]], True, id="and-both"),
        pytest.param([[RECENT, SMS]], False, id="and-one-false"),
        pytest.param([[SMS, RECENT]], False, id="and-first-false"),
        pytest.param([[SMS], [PUNE]], True, id="or-second"),
        pytest.param([[PUNE], [SMS]], True, id="or-first"),
        pytest.param([[SMS], [RECENT, SMS]], False, id="or-none"),
        pytest.param([[RECENT, SMS], [PUNE, RECENT]], True, id="or-of-ands"),
    ],
)
def test_groups_are_and_and_rule_is_or(
    groups: list[list[Cond]], expected: bool
) -> None:
    contact = view(
        dates={"last_link_clicked": noon(days_ago(2))},
        strings={"channel_type": "WhatsApp"},
        attributes={"city": "Pune"},
    )

    assert compiled(*groups).matches(contact, TODAY, UTC_ZONE) is expected


def test_signal_fields_lists_signals_not_attributes() -> None:
    rule = parse_rule(
        {
            "any": [
                {"all": [{"field": CLICK, "op": "is_set"}]},
                {
                    "all": [
                        {"field": "attribute.city", "op": "is", "value": "x"},
                        {"field": CHANNEL, "op": "is_set"},
                        {"field": CLICK, "op": "in_last", "value": 3},
                    ]
                },
            ]
        }
    )

    assert signal_fields(rule) == {"last_link_clicked", "channel_type"}


# --- next_change, by example ---------------------------------------------------


@pytest.mark.parametrize(
    ("groups", "contact", "expected"),
    [
        pytest.param(
            [[RECENT]], clicked(days_ago(2)), TODAY + timedelta(5), id="in_last-leaves"
        ),
        pytest.param(
            [[(CLICK, "not_in_last", 7)]],
            clicked(days_ago(2)),
            TODAY + timedelta(5),
            id="not_in_last-enters",
        ),
        pytest.param(
            [[("signal.links_clicked_7d", "gte", 3)]],
            view(counts=CLICKS),
            TODAY + timedelta(1),
            id="count-drops",
        ),
        pytest.param(
            [[(CLICK, "day_in_this_month", None)]],
            clicked(date(2001, 1, 15)),
            date(2027, 1, 1),
            id="month-turns",
        ),
        pytest.param(
            [[(CLICK, "day_in_last", 3)]],
            clicked(date(2000, 2, 29)),
            date(2027, 2, 28),
            id="birthday-29-feb",
        ),
        pytest.param(
            [[(CLICK, "in_last", 3650)]],
            clicked(TODAY),
            TODAY + timedelta(3650),
            id="beyond-horizon",
        ),
        pytest.param(
            [[(CLICK, "day_in_last", 366)]],
            clicked(date(2000, 2, 29)),
            TODAY + timedelta(HORIZON_DAYS),
            id="always-true-recurs",
        ),
        pytest.param(
            [[(CLICK, "day_in_this_month", None), (CLICK, "is_not_set", None)]],
            clicked(TODAY),
            TODAY + timedelta(HORIZON_DAYS),
            id="never-true-recurs",
        ),
        pytest.param([[SMS, RECENT]], clicked(days_ago(2)), None, id="constant-false"),
        pytest.param([[(CLICK, "day_in_last", 7)]], clicked(None), None, id="unset"),
        pytest.param(
            [[("attribute.d", "in_last", 30)]],
            view(attributes={"d": "9999-12-31"}),
            None,
            id="attribute-date-never-reached",
        ),
    ],
)
def test_next_change(
    groups: list[list[Cond]], contact: ContactView, expected: date | None
) -> None:
    assert compiled(*groups).next_change(contact, TODAY, UTC_ZONE) == expected


FIRST_CONVERSATION = "signal.first_conversation_at"


def test_next_change_sees_last_years_anniversary_leave_the_window() -> None:
    rule = compiled([(CLICK, "day_in_last", 10)])
    contact = clicked(date(2000, 12, 30))

    assert rule.next_change(contact, date(2027, 1, 5), UTC_ZONE) == date(2027, 1, 9)


def test_next_change_lists_months_of_the_horizon_year() -> None:
    # Not before 26 July 2028 (600 days on), and only in September.
    rule = compiled(
        [(FIRST_CONVERSATION, "not_in_last", 600), (CLICK, "day_in_this_month", None)]
    )
    contact = view(
        dates={
            "first_conversation_at": noon(TODAY),
            "last_link_clicked": noon(date(2001, 9, 9)),
        }
    )

    assert rule.next_change(contact, TODAY, UTC_ZONE) == date(2028, 9, 1)


def test_next_change_stops_at_the_horizon_when_conditions_recur() -> None:
    # The first group turns true on 1 February 2029, past the horizon, where
    # anniversaries and months are no longer listed; the second group turns
    # true later still. The horizon comes first, not the later change.
    rule = compiled(
        [(FIRST_CONVERSATION, "not_in_last", 750), (CLICK, "day_in_this_month", None)],
        [("attribute.d", "not_in_last", 1000)],
    )
    contact = view(
        dates={
            "first_conversation_at": noon(TODAY),
            "last_link_clicked": noon(date(2001, 2, 1)),
        },
        attributes={"d": TODAY.isoformat()},
    )

    assert rule.next_change(contact, TODAY, UTC_ZONE) == TODAY + timedelta(HORIZON_DAYS)


def test_next_change_recurs_when_any_condition_recurs() -> None:
    rule = compiled(
        [(CLICK, "day_in_last", 366)], [(FIRST_CONVERSATION, "in_last", 3650)]
    )
    contact = view(
        dates={
            "first_conversation_at": noon(TODAY),
            "last_link_clicked": noon(date(2000, 2, 29)),
        }
    )

    assert rule.next_change(contact, TODAY, UTC_ZONE) == TODAY + timedelta(HORIZON_DAYS)


# --- properties on generated contacts -----------------------------------------

ZONES = [
    ZoneInfo(name)
    for name in (
        "UTC",
        "Pacific/Kiritimati",
        "Pacific/Pago_Pago",
        "America/New_York",
        "Australia/Lord_Howe",
        "Asia/Kathmandu",
    )
]

#: Any day, days around New Year (anniversaries of last year still count),
#: and the days around 29 February.
todays = st.one_of(
    st.dates(date(2023, 1, 1), date(2031, 12, 31)),
    st.tuples(st.integers(2024, 2031), st.integers(-20, 60)).map(
        lambda year_day: date(year_day[0], 1, 1) + timedelta(year_day[1])
    ),
    st.sampled_from([date(2027, 2, 28), date(2027, 3, 1), date(2028, 3, 1)]),
)


@settings(max_examples=200, deadline=None, database=None)
@given(
    tz=st.sampled_from(ZONES),
    today=todays,
    clicks=st.lists(st.integers(-5, 200 * 24 * 60), max_size=12),
    minute_of_day=st.integers(0, 24 * 60 - 1),
)
def test_clicks_in_7_days_iff_last_click_in_last_7(
    tz: ZoneInfo, today: date, clicks: list[int], minute_of_day: int
) -> None:
    # 1. "now" is an instant on the local date `today`; clicks happened up to
    #    200 days before it, or up to the allowed clock skew after it.
    now = datetime.combine(today, time(), tzinfo=tz) + timedelta(minutes=minute_of_day)
    instants = [now - timedelta(minutes=ago) for ago in clicks]

    # 2. The view a store would give: buckets by local date for days still
    #    inside the longest window, and the newest click.
    buckets: dict[date, int] = {}
    for instant in instants:
        day = instant.astimezone(tz).date()
        if day >= today - timedelta(89):
            buckets[day] = buckets.get(day, 0) + 1
    contact = view(
        dates={"last_link_clicked": max(instants).astimezone(UTC)} if instants else {},
        counts={Counter.LINKS_CLICKED: sorted(buckets.items())},
    )

    # 3. Both readings agree today and on every later day.
    by_count = compiled([("signal.links_clicked_7d", "gte", 1)])
    by_date = compiled([RECENT])
    for later in range(100):
        day = today + timedelta(later)
        assert by_count.matches(contact, day, tz) == by_date.matches(contact, day, tz)


DATE_SIGNALS = ("last_link_clicked", "first_conversation_at")
RECURRING = {"day_in_last", "day_in_this_month"}


def local_days(today: date) -> st.SearchStrategy[date]:
    """Local dates that make windows and anniversaries flip soon after today.

    Dates within a year of today cover every anniversary near it; older ones
    feed long windows; 29 February is drawn on purpose.
    """
    return st.one_of(
        st.integers(-400, 30).map(lambda ago: today + timedelta(ago)),
        st.integers(-3700, -400).map(lambda ago: today + timedelta(ago)),
        st.sampled_from([date(2000, 2, 29), date(2024, 2, 29), date(2001, 2, 28)]),
    )


def date_conditions(field: str) -> st.SearchStrategy[Cond]:
    windows = st.one_of(st.integers(1, 400), st.integers(1, 3650))
    return st.one_of(
        st.tuples(st.just(field), st.sampled_from(["in_last", "not_in_last"]), windows),
        st.tuples(
            st.just(field),
            st.just("day_in_last"),
            st.one_of(st.integers(1, 31), st.integers(1, 366)),
        ),
        st.tuples(st.just(field), st.just("day_in_this_month"), st.none()),
        st.tuples(st.just(field), st.just("day_in_month"), st.integers(1, 12)),
        st.tuples(
            st.just(field),
            st.sampled_from(["before", "after", "on", "is_set", "is_not_set"]),
            st.sampled_from(["2026-12-31", "2028-02-29"]),
        ).map(lambda c: c if c[1] in ("before", "after", "on") else (*c[:2], None)),
    )


count_conditions = st.tuples(
    st.sampled_from(
        [
            "signal.links_clicked_7d",
            "signal.links_clicked_30d",
            "signal.links_clicked_90d",
            "signal.campaigns_received_7d",
        ]
    ),
    st.sampled_from(["eq", "ne", "gt", "gte", "lt", "lte", "between"]),
    st.integers(0, 6),
).map(lambda c: (*c[:2], [c[2], c[2] + 2]) if c[1] == "between" else c)

conditions = st.one_of(
    st.sampled_from(
        [
            "signal.last_link_clicked",
            "signal.first_conversation_at",
            "attribute.birthday",
        ]
    ).flatmap(date_conditions),
    count_conditions,
)


@st.composite
def contacts(draw: st.DrawFn, today: date, tz: ZoneInfo) -> ContactView:
    """A contact whose dates, counts and birthday sit around ``today``."""
    days = local_days(today)
    minutes = st.integers(0, 24 * 60 - 1)

    def instant(day: date, minute: int) -> datetime:
        local = datetime.combine(day, time(), tzinfo=tz) + timedelta(minutes=minute)
        return local.astimezone(UTC)

    # Mostly set: an unset value makes most date conditions constant.
    mostly = st.sampled_from([True, True, True, False])
    dates = {
        name: instant(draw(days), draw(minutes))
        for name in DATE_SIGNALS
        if draw(mostly)
    }
    counts = {
        counter: [
            (today - timedelta(days=ago), n)
            for ago, n in draw(
                st.dictionaries(st.integers(0, 89), st.integers(1, 3), max_size=6)
            ).items()
        ]
        for counter in (Counter.LINKS_CLICKED, Counter.CAMPAIGNS_RECEIVED)
    }
    birthday: st.SearchStrategy[AttributeValue] = st.one_of(
        days.map(date.isoformat),
        st.builds(lambda d, m: instant(d, m).astimezone(tz).isoformat(), days, minutes),
        st.sampled_from(["not a date", 12, True]),
    )
    attributes: dict[str, AttributeValue] = {}
    if draw(mostly):
        attributes["birthday"] = draw(birthday)
    return view(dates=dates, counts=counts, attributes=attributes)


def first_change(
    rule: CompiledRule, contact: ContactView, today: date, tz: ZoneInfo, days: int
) -> date | None:
    """The first of the next ``days`` days whose answer differs, by trying each."""
    answer = rule.matches(contact, today, tz)
    for ahead in range(1, days + 1):
        day = today + timedelta(ahead)
        if rule.matches(contact, day, tz) != answer:
            return day
    return None


@settings(max_examples=300, deadline=None, database=None)
@given(
    data=st.data(),
    tz=st.sampled_from(ZONES),
    today=todays,
    groups=st.lists(
        st.lists(conditions, min_size=1, max_size=3), min_size=1, max_size=2
    ),
)
def test_next_change_is_the_first_day_the_answer_differs(
    data: st.DataObject, tz: ZoneInfo, today: date, groups: list[list[Cond]]
) -> None:
    contact = data.draw(contacts(today, tz))
    rule = compiled(*groups)

    predicted = rule.next_change(contact, today, tz)

    # Look 800 days ahead, or as far as the prediction if it is further.
    reach = max(800, (predicted - today).days if predicted else 0)
    actual = first_change(rule, contact, today, tz, reach)
    horizon = today + timedelta(HORIZON_DAYS)
    recurs = any(op in RECURRING for group in groups for _, op, _ in group)
    if predicted == horizon and recurs:
        assert actual is None or actual >= horizon
    else:
        assert predicted == actual


@settings(max_examples=300, deadline=None, database=None)
@given(
    data=st.data(),
    tz=st.sampled_from(ZONES),
    today=todays,
    ahead=st.integers(min_value=-3, max_value=900),
    groups=st.lists(
        st.lists(conditions, min_size=1, max_size=3), min_size=1, max_size=2
    ),
)
def test_next_change_until_is_the_first_change_up_to_that_day(
    data: st.DataObject,
    tz: ZoneInfo,
    today: date,
    ahead: int,
    groups: list[list[Cond]],
) -> None:
    """What ``Engine.backfill``'s look asks: a change on or before ``until``."""
    contact = data.draw(contacts(today, tz))
    rule = compiled(*groups)
    until = today + timedelta(ahead)

    first = rule.next_change(contact, today, tz)
    bounded = rule.next_change(contact, today, tz, until=until)

    assert bounded == (first if first is not None and first <= until else None)
