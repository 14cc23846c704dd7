"""A read-only view of one contact, as rules and the HTTP API see it.

The store keeps a compact document per contact (see ``signals.profile``); this
view is what every consumer of that document reads, so the rule evaluator never
depends on the storage format.

``ContactView`` is the interface. Two classes implement it: ``PlainView``,
built from ready mappings (tests, and the reference the faster one is checked
against), and ``signals.profile.ProfileView``, which reads a profile's own
integers and converts only what a rule asks for: a walk over every contact
builds one such object per contact, so its cost is the walk's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from zoneinfo import ZoneInfo

from signals.catalog import COUNT_SIGNALS, Counter
from signals.windows import window_start

#: A JSON scalar as ``contact.updated`` attributes carry them.
AttributeValue = str | int | float | bool


class ContactView(ABC):
    """One contact's signals and attributes, with time zone already applied.

    ``dates`` holds only the date signals that are set (UTC-aware instants);
    ``strings`` only the set string signals; ``attributes`` only attributes
    whose current value is not null. ``counter_days`` holds, for each counter,
    ``(local_date, count)`` pairs in the tenant's zone, for local dates that
    can still fall in the longest window; a counter signal's value on local
    date ``today`` is ``count(name, today)``.
    """

    __slots__ = ()

    tenant_id: str
    contact_id: str

    @property
    @abstractmethod
    def dates(self) -> Mapping[str, datetime]: ...

    @property
    @abstractmethod
    def strings(self) -> Mapping[str, str]: ...

    @property
    @abstractmethod
    def attributes(self) -> Mapping[str, AttributeValue]: ...

    @property
    @abstractmethod
    def counter_days(self) -> Mapping[Counter, Sequence[tuple[date, int]]]: ...

    @abstractmethod
    def attribute(self, name: str) -> AttributeValue | None:
        """An attribute's current value (``attributes.get``), read alone."""

    @abstractmethod
    def string(self, signal: str) -> str | None:
        """A string signal's value (``strings.get``), read alone."""

    @abstractmethod
    def local_date(self, signal: str, tz: ZoneInfo) -> date | None:
        """The local date in ``tz`` of a date signal, None when it is unset."""

    @abstractmethod
    def counted_days(self, signal: str, today: date) -> Iterable[date]:
        """The local dates with counts that a counter signal still counts on
        ``today`` (from the window's first day on), ascending."""

    @abstractmethod
    def count(self, signal: str, today: date) -> int:
        """The value of a counter signal such as ``links_clicked_7d`` on ``today``."""


@dataclass(frozen=True, slots=True)
class PlainView(ContactView):
    """A view over ready mappings (instants, strings, per-day counts)."""

    tenant_id: str
    contact_id: str
    dates: Mapping[str, datetime] = field(default_factory=dict)
    strings: Mapping[str, str] = field(default_factory=dict)
    counter_days: Mapping[Counter, Sequence[tuple[date, int]]] = field(
        default_factory=dict
    )
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)
    #: Per counter, its days and the running totals from each day to the last;
    #: built on first use, since rules ask for counts on many candidate days.
    _suffix: dict[Counter, tuple[list[date], list[int]]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def attribute(self, name: str) -> AttributeValue | None:
        return self.attributes.get(name)

    def string(self, signal: str) -> str | None:
        return self.strings.get(signal)

    def local_date(self, signal: str, tz: ZoneInfo) -> date | None:
        instant = self.dates.get(signal)
        return None if instant is None else instant.astimezone(tz).date()

    def counted_days(self, signal: str, today: date) -> Iterable[date]:
        counter, days = COUNT_SIGNALS[signal]
        start = window_start(today, days)
        return [day for day, _ in self.counter_days.get(counter, ()) if day >= start]

    def count(self, signal: str, today: date) -> int:
        counter, days = COUNT_SIGNALS[signal]
        cached = self._suffix.get(counter)
        if cached is None:
            per_day = sorted(self.counter_days.get(counter, ()))
            totals = [0] * (len(per_day) + 1)
            for i in range(len(per_day) - 1, -1, -1):
                totals[i] = totals[i + 1] + per_day[i][1]
            cached = ([day for day, _ in per_day], totals)
            self._suffix[counter] = cached
        day_list, totals = cached
        return totals[bisect_left(day_list, window_start(today, days))]
