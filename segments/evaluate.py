"""Evaluating segment rules against contacts, and predicting when answers change.

Compilation
    ``compile_rule`` turns a validated ``Rule`` into nested tuples of closures,
    once per segment version. Every operand is prepared up front (dates parsed,
    strings case-folded, ``in`` lists made sets, windows made ``timedelta``), so
    a call of ``CompiledRule.matches`` only reads the contact and compares: no
    pydantic, no parsing of the rule. The one thing parsed per contact, an
    attribute string read as a date, goes through a cache keyed by the string.
    Groups and conditions short-circuit in rule order.

What a condition reads
    A date signal is compared as its local date in the tenant's zone
    (``view.local_date``); a count signal is ``view.count(name, today)``; a
    string signal is ``view.string(name)``, an attribute
    ``view.attribute(name)``. An attribute takes the operators of its
    value's JSON type:

    * ``int``/``float`` (never ``bool``): the count operators, numerically, so
      ``eq 3`` matches ``3.0``;
    * ``str``: the string operators, and the date operators too when the string
      is an ISO 8601 date ``YYYY-MM-DD`` (a local date as it stands) or an ISO
      8601 / RFC 3339 datetime with an offset (converted to its local date); a
      string that is neither is a mismatch for the date operators;
    * ``bool``: only ``is_set``/``is_not_set``; every other operator is a
      mismatch, string operators included (``true`` is not the string
      ``"true"``).

    A mismatch is false for every operator. That includes ``is_not``,
    ``not_in`` and ``not_contains``, which are true on an *unset* value but
    false on a value of the wrong type: ``attribute.plan is_not "gold"`` does
    not select contacts whose ``plan`` is the number 3, the same way
    ``attribute.age lt 30`` does not select contacts whose ``age`` is
    ``"thirty"``. ``is_set``/``is_not_set`` only ask whether a value is there,
    whatever its type.

Predicting change
    Time enters a condition only through the local date ``today``, so a rule's
    answer for an unchanged contact is constant between local midnights and can
    only flip on a few dates per condition (its breakpoints):

    * ``in_last N``/``not_in_last N`` on local date v: v + N;
    * a count window of N days: day + N for every counted day;
    * ``day_in_last N``: each anniversary A of the value, and A + N;
    * ``day_in_this_month``: the first day of the value's month, and of the
      month after it;
    * every other operator compares with constants: never.

    ``CompiledRule.next_change`` evaluates the rule on the sorted breakpoints
    after ``today`` and returns the first one where the answer differs. That is
    exact: between breakpoints no condition changes, so neither does the rule.

    Anniversaries and months recur forever, so they are listed only up to a
    horizon, ``HORIZON_DAYS`` after today. When such a recurring condition is
    present and nothing changes up to the horizon, ``next_change`` returns the
    horizon date itself: the caller evaluates again then, finds the same
    answer, and schedules the next horizon. A rule like "birthday within the
    last 366 days" is always true, and costs one such wake-up every two years.
"""

from __future__ import annotations

import re
from calendar import isleap
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Final, NamedTuple, cast
from zoneinfo import ZoneInfo

from segments.rules import OPERATORS, Condition, Rule
from signals.catalog import COUNT_SIGNALS, SIGNAL_TYPES, SignalType
from signals.view import AttributeValue, ContactView

#: How far ahead recurring breakpoints (anniversaries, months) are listed.
HORIZON_DAYS: Final = 731

_HORIZON: Final = timedelta(days=HORIZON_DAYS)

_PRESENCE: Final = frozenset({"is_set", "is_not_set"})
_COUNT_OPS: Final = OPERATORS[SignalType.COUNT]

#: A condition on a contact at a local date in a zone.
Test = Callable[[ContactView, date, ZoneInfo], bool]

#: A condition's breakpoints for a contact, and whether they recur forever
#: (then only those up to the horizon are listed).
Breakpoints = Callable[[ContactView, date, ZoneInfo], tuple[Iterable[date], bool]]

#: A date operator applied to a set local date ``value`` on local date ``today``.
DateCheck = Callable[[date, date], bool]

#: The breakpoints of a date operator for a set local date ``value``.
DateBreaks = Callable[[date, date], Iterable[date]]


class _Condition(NamedTuple):
    test: Test
    #: None when the condition does not depend on the date at all.
    breakpoints: Breakpoints | None


class _DateOp(NamedTuple):
    check: DateCheck
    breaks: DateBreaks | None
    recurring: bool


class CompiledRule:
    """A rule ready to evaluate; build it with ``compile_rule``."""

    __slots__ = ("_groups", "_timed")

    def __init__(
        self,
        groups: Sequence[Sequence[Test]],
        timed: Sequence[Breakpoints],
    ) -> None:
        self._groups = tuple(tuple(group) for group in groups)
        self._timed = tuple(timed)

    def matches(self, view: ContactView, today: date, tz: ZoneInfo) -> bool:
        """Whether the contact belongs on local date ``today`` in zone ``tz``."""
        for group in self._groups:
            for test in group:
                if not test(view, today, tz):
                    break
            else:
                return True
        return False

    def next_change(
        self,
        view: ContactView,
        today: date,
        tz: ZoneInfo,
        answer: bool | None = None,
        until: date | None = None,
    ) -> date | None:
        """The first local date after ``today`` on which ``matches`` differs.

        Assumes the contact stays as ``view`` shows it. None when the answer
        never changes; the horizon date (``today`` + ``HORIZON_DAYS``) when a
        recurring condition was only looked at that far and nothing changed.
        ``answer`` is ``matches`` on ``today``, when the caller knows it.
        With ``until``, only dates up to it are looked at: the result is the
        same where it is ``until`` or earlier, and None otherwise.
        """
        # 1. Gather every date on which some condition may flip.
        candidates: set[date] = set()
        recurring = False
        for breakpoints in self._timed:
            dates, recurs = breakpoints(view, today, tz)
            candidates.update(dates)
            recurring = recurring or recurs

        # 2. Walk them in order. Past the horizon, recurring breakpoints were
        #    not listed, so the first change could hide among them: stop there.
        if not candidates and not recurring:
            return None  # no condition depends on the date
        horizon = today + _HORIZON
        last = horizon if recurring else None
        if until is not None and (last is None or until < last):
            last = until
        if answer is None:
            answer = self.matches(view, today, tz)
        for day in sorted(day for day in candidates if day > today):
            if last is not None and day > last:
                break
            if self.matches(view, day, tz) != answer:
                return day
        if recurring and (until is None or horizon <= until):
            return horizon
        return None


def compile_rule(rule: Rule) -> CompiledRule:
    """Compile a validated rule; the result is immutable and may be shared."""
    groups: list[list[Test]] = []
    timed: list[Breakpoints] = []
    for group in rule.any:
        tests: list[Test] = []
        for condition in group.all:
            compiled = _compile_condition(condition)
            tests.append(compiled.test)
            if compiled.breakpoints is not None:
                timed.append(compiled.breakpoints)
        groups.append(tests)
    return CompiledRule(groups, timed)


def signal_fields(rule: Rule) -> frozenset[str]:
    """The names of the signals a rule reads (attributes left out)."""
    return frozenset(
        condition.name
        for group in rule.any
        for condition in group.all
        if not condition.is_attribute
    )


def _compile_condition(condition: Condition) -> _Condition:
    name, op, value = condition.name, condition.op, condition.value
    wanted = op == "is_set"
    if condition.is_attribute:
        if op in _PRESENCE:
            return _Condition(
                lambda view, today, tz: (view.attribute(name) is not None) is wanted,
                None,
            )
        if op in _DATE_OPS:
            return _date_condition(_attribute_date_reader(name), _DATE_OPS[op](value))
        if op in _COUNT_OPS:
            return _Condition(_attribute_number(name, _count_check(op, value)), None)
        return _Condition(_attribute_string(name, _string_check(op, value)), None)

    signal_type = SIGNAL_TYPES[name]
    if signal_type is SignalType.COUNT:
        return _count_signal(name, _count_check(op, value))
    if signal_type is SignalType.DATE:
        if op in _PRESENCE:
            return _Condition(
                lambda view, today, tz: (
                    (view.local_date(name, tz) is not None) is wanted
                ),
                None,
            )
        return _date_condition(_signal_date_reader(name), _DATE_OPS[op](value))
    if op in _PRESENCE:
        return _Condition(
            lambda view, today, tz: (view.string(name) is not None) is wanted,
            None,
        )
    return _Condition(_signal_string(name, _string_check(op, value)), None)


# --- date operators ----------------------------------------------------------

DateReader = Callable[[ContactView, ZoneInfo], date | None]


def _signal_date_reader(name: str) -> DateReader:
    def read(view: ContactView, tz: ZoneInfo) -> date | None:
        return view.local_date(name, tz)

    return read


def _attribute_date_reader(name: str) -> DateReader:
    def read(view: ContactView, tz: ZoneInfo) -> date | None:
        return _attribute_date(view.attribute(name), tz)

    return read


def _attribute_date(raw: AttributeValue | None, tz: ZoneInfo) -> date | None:
    """The local date an attribute value stands for, or None if it is no date."""
    if not isinstance(raw, str):
        return None
    parsed = _parse_temporal(raw)
    if isinstance(parsed, datetime):
        try:
            return parsed.astimezone(tz).date()
        except OverflowError:  # a datetime at the edge of year 1 or 9999
            return None
    return parsed


_DATE_PREFIX = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


@lru_cache(maxsize=4096)
def _parse_temporal(raw: str) -> date | datetime | None:
    """A date, an offset-aware datetime, or None; cached: attribute values repeat.

    ``YYYY-MM-DD`` alone is a date. A longer string must start with one and be
    a datetime that ``datetime.fromisoformat`` reads with an offset; a naive
    datetime names no instant and is no date.
    """
    if not _DATE_PREFIX.match(raw):
        return None
    try:
        if len(raw) == 10:
            return date.fromisoformat(raw)
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _date_condition(read: DateReader, op: _DateOp) -> _Condition:
    check, breaks, recurring = op

    def test(view: ContactView, today: date, tz: ZoneInfo) -> bool:
        value = read(view, tz)
        return value is not None and check(value, today)

    if breaks is None:
        return _Condition(test, None)

    def breakpoints(
        view: ContactView, today: date, tz: ZoneInfo
    ) -> tuple[Iterable[date], bool]:
        value = read(view, tz)
        if value is None:
            return (), False
        return breaks(value, today), recurring

    return _Condition(test, breakpoints)


def _anniversary(year: int, month: int, day: int) -> date:
    """(month, day) in ``year``; 29 February is 28 February in a common year."""
    if month == 2 and day == 29 and not isleap(year):
        return date(year, 2, 28)
    return date(year, month, day)


def _recurring_years(today: date) -> range:
    """Years whose anniversaries and months can flip a condition up to the horizon.

    ``day_in_last N`` flips on an anniversary A and on A + N, N <= 366, so
    last year's anniversary may still flip it; nothing after the horizon's
    year is needed.
    """
    return range(today.year - 1, (today + _HORIZON).year + 1)


def _shifted(value: date, days: timedelta) -> tuple[date, ...]:
    """``value + days``, or nothing for a date so late it is never reached."""
    try:
        return (value + days,)
    except OverflowError:
        return ()


def _in_last(raw: object) -> _DateOp:
    days = timedelta(days=cast(int, raw))
    span = days - timedelta(days=1)
    return _DateOp(
        lambda value, today: value >= today - span,
        lambda value, today: _shifted(value, days),
        recurring=False,
    )


def _not_in_last(raw: object) -> _DateOp:
    days = timedelta(days=cast(int, raw))
    span = days - timedelta(days=1)
    return _DateOp(
        lambda value, today: value < today - span,
        lambda value, today: _shifted(value, days),
        recurring=False,
    )


def _day_in_last(raw: object) -> _DateOp:
    days = timedelta(days=cast(int, raw))
    span = days - timedelta(days=1)

    def check(value: date, today: date) -> bool:
        # The latest anniversary on or before today is this year's or, if
        # that is still to come, last year's; the window holds one if it
        # holds that one. N <= 366 keeps the window within two years.
        latest = _anniversary(today.year, value.month, value.day)
        if latest > today:
            latest = _anniversary(today.year - 1, value.month, value.day)
        return latest >= today - span

    def breaks(value: date, today: date) -> list[date]:
        dates: list[date] = []
        for year in _recurring_years(today):
            start = _anniversary(year, value.month, value.day)
            dates += (start, start + days)
        return dates

    return _DateOp(check, breaks, recurring=True)


def _day_in_this_month(raw: object) -> _DateOp:
    def breaks(value: date, today: date) -> list[date]:
        dates: list[date] = []
        for year in _recurring_years(today):
            dates.append(date(year, value.month, 1))
            if value.month == 12:
                dates.append(date(year + 1, 1, 1))
            else:
                dates.append(date(year, value.month + 1, 1))
        return dates

    return _DateOp(
        lambda value, today: value.month == today.month, breaks, recurring=True
    )


def _day_in_month(raw: object) -> _DateOp:
    month = cast(int, raw)
    return _DateOp(lambda value, today: value.month == month, None, recurring=False)


def _before(raw: object) -> _DateOp:
    bound = date.fromisoformat(cast(str, raw))
    return _DateOp(lambda value, today: value < bound, None, recurring=False)


def _after(raw: object) -> _DateOp:
    bound = date.fromisoformat(cast(str, raw))
    return _DateOp(lambda value, today: value > bound, None, recurring=False)


def _on(raw: object) -> _DateOp:
    bound = date.fromisoformat(cast(str, raw))
    return _DateOp(lambda value, today: value == bound, None, recurring=False)


_DATE_OPS: Final[Mapping[str, Callable[[object], _DateOp]]] = {
    "in_last": _in_last,
    "not_in_last": _not_in_last,
    "day_in_last": _day_in_last,
    "day_in_this_month": _day_in_this_month,
    "day_in_month": _day_in_month,
    "before": _before,
    "after": _after,
    "on": _on,
}


# --- count operators ---------------------------------------------------------

NumberCheck = Callable[[float], bool]


def _count_check(op: str, raw: object) -> NumberCheck:
    if op == "between":
        low, high = cast(list[int], raw)
        return lambda n: low <= n <= high
    k = cast(int, raw)
    checks: dict[str, NumberCheck] = {
        "eq": lambda n: n == k,
        "ne": lambda n: n != k,
        "gt": lambda n: n > k,
        "gte": lambda n: n >= k,
        "lt": lambda n: n < k,
        "lte": lambda n: n <= k,
    }
    return checks[op]


def _count_signal(name: str, check: NumberCheck) -> _Condition:
    _, days = COUNT_SIGNALS[name]
    window = timedelta(days=days)

    def test(view: ContactView, today: date, tz: ZoneInfo) -> bool:
        return check(view.count(name, today))

    def breakpoints(
        view: ContactView, today: date, tz: ZoneInfo
    ) -> tuple[Iterable[date], bool]:
        # A counted day leaves the window N days later; nothing ever enters it
        # as time passes alone. Days already out of the window flip nothing.
        return [day + window for day in view.counted_days(name, today)], False

    return _Condition(test, breakpoints)


def _attribute_number(name: str, check: NumberCheck) -> Test:
    def test(view: ContactView, today: date, tz: ZoneInfo) -> bool:
        raw = view.attribute(name)
        return isinstance(raw, int | float) and not isinstance(raw, bool) and check(raw)

    return test


# --- string operators --------------------------------------------------------

#: A string operator on a case-folded value, or None when the value is unset.
StringCheck = Callable[[str | None], bool]


def _string_check(op: str, raw: object) -> StringCheck:
    if op in ("in", "not_in"):
        options = frozenset(item.casefold() for item in cast(list[str], raw))
        if op == "in":
            return lambda s: s in options
        return lambda s: s not in options
    operand = cast(str, raw).casefold()
    checks: dict[str, StringCheck] = {
        "is": lambda s: s == operand,
        "is_not": lambda s: s != operand,
        "contains": lambda s: s is not None and operand in s,
        "not_contains": lambda s: s is None or operand not in s,
        "starts_with": lambda s: s is not None and s.startswith(operand),
    }
    return checks[op]


def _signal_string(name: str, check: StringCheck) -> Test:
    def test(view: ContactView, today: date, tz: ZoneInfo) -> bool:
        raw = view.string(name)
        return check(None if raw is None else raw.casefold())

    return test


def _attribute_string(name: str, check: StringCheck) -> Test:
    def test(view: ContactView, today: date, tz: ZoneInfo) -> bool:
        raw = view.attribute(name)
        if raw is None:
            return check(None)
        return isinstance(raw, str) and check(raw.casefold())

    return test
