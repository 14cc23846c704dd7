"""A profile's meaning, independent of how it is stored (for format tests)."""

from __future__ import annotations

from datetime import date
from typing import Any
from zoneinfo import ZoneInfo

from signals.profile import Profile, signals_json


def canonical(profile: Profile, tz: ZoneInfo, today: date) -> dict[str, Any]:
    """Everything a stored profile must give back: signals, attributes, the
    deduplication set, memberships and the wake-up."""
    view = profile.view("t", "c", tz)
    return {
        "signals": signals_json(view, today),
        "attributes": profile.current_attributes(),
        "seen": sorted(profile.seen),
        "membership": profile.membership,
        "next_wake_us": profile.next_wake_us,
        "next_wake_segment": profile.next_wake_segment,
    }
