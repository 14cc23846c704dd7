"""A read-only view of one contact, as rules and the HTTP API see it.

The store keeps a compact document per contact (see ``signals.profile``); this
view is what every consumer of that document reads, so the rule evaluator never
depends on the storage format.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

from signals.catalog import COUNT_SIGNALS, Counter
from signals.windows import window_start

#: A JSON scalar as ``contact.updated`` attributes carry them.
AttributeValue = str | int | float | bool


@dataclass(frozen=True, slots=True)
class ContactView:
    """One contact's signals and attributes, with time zone already applied.

    ``dates`` holds only the date signals that are set (UTC-aware instants);
    ``strings`` only the set string signals. ``counter_days`` holds, for each
    counter, ``(local_date, count)`` pairs in the tenant's zone, for local
    dates that can still fall in the longest window; a counter signal's value
    on local date ``today`` is ``count(name, today)``.
    """

    tenant_id: str
    contact_id: str
    dates: Mapping[str, datetime] = field(default_factory=dict)
    strings: Mapping[str, str] = field(default_factory=dict)
    counter_days: Mapping[Counter, Sequence[tuple[date, int]]] = field(
        default_factory=dict
    )
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)

    def count(self, signal: str, today: date) -> int:
        """The value of a counter signal such as ``links_clicked_7d`` on ``today``."""
        counter, days = COUNT_SIGNALS[signal]
        start = window_start(today, days)
        return sum(n for day, n in self.counter_days.get(counter, ()) if day >= start)
