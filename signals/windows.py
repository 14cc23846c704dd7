"""Local calendar days in a tenant's time zone.

Every window in the contract ("the last N days", counters, ``in_last``) is made
of whole local calendar days in the tenant's IANA time zone. These helpers are
the one place where instants become local dates and local dates become
instants, so DST gaps and far-from-UTC zones are handled once.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from signals.errors import InvalidTimezoneError

#: Instants are kept as integer microseconds since the Unix epoch: exact for
#: RFC 3339 inputs up to microseconds and still exact as JSON numbers.
US = 1_000_000

#: Counter buckets are 15-minute UTC slots. Every modern UTC offset is a
#: multiple of 15 minutes, so all instants of one slot share one local date in
#: any tenant time zone, and a tenant may change its zone without re-bucketing.
SLOT_US = 15 * 60 * US


@lru_cache(maxsize=1024)
def zone(name: str) -> ZoneInfo:
    """Return the zone for an IANA name, or raise ``InvalidTimezoneError``."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidTimezoneError(f"unknown IANA time zone {name!r}") from exc


def local_date(instant: datetime, tz: ZoneInfo) -> date:
    """The calendar date of ``instant`` on a wall clock in ``tz``."""
    return instant.astimezone(tz).date()


def local_date_us(epoch_us: int, tz: ZoneInfo) -> date:
    return from_us(epoch_us).astimezone(tz).date()


@lru_cache(maxsize=65_536)
def slot_local_date(slot: int, tz: ZoneInfo) -> date:
    """The local date of a counter slot; slots repeat across contacts, so cached."""
    return local_date_us(slot * SLOT_US, tz)


def start_of_local_day(day: date, tz: ZoneInfo) -> datetime:
    """The first instant (UTC) whose local date in ``tz`` is ``day``.

    Where a DST gap swallows local midnight, the day starts at the end of the
    gap; ``fold=0`` on a non-existent wall time resolves to exactly that.
    """
    wall = datetime(day.year, day.month, day.day, tzinfo=tz)
    return wall.astimezone(UTC)


def window_start(today: date, days: int) -> date:
    """The oldest local date inside "the last ``days`` days" ending ``today``."""
    return today - timedelta(days=days - 1)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_us(instant: datetime) -> int:
    """Exact integer microseconds since the epoch (no float rounding)."""
    delta = instant - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * US + delta.microseconds


def from_us(epoch_us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=epoch_us)


@lru_cache(maxsize=1024)
def rfc3339(epoch_us: int) -> str:
    """UTC RFC 3339, with a fraction only when there is one (``...T10:15:00Z``).

    Cached: the membership records of one batch share their instant.
    """
    text = from_us(epoch_us).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = epoch_us % US
    if fraction:
        text += f".{fraction:06d}".rstrip("0")
    return text + "Z"
