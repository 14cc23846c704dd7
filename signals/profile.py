"""One contact's profile document, and the fold of events into it.

A profile is a small JSON document (orjson) kept in one Redis string per
contact. Everything one event changes lives in it, so applying an event is a
single compare-and-set write: atomic without cross-key transactions, and the
same on a Redis Cluster.

Order independence. Every signal is a commutative, idempotent merge of the
events seen so far: ``max``/``min`` for dates, and for "latest" values the
pair ``(occurred_at, event_id)`` decides, whatever the arrival order. The only
non-idempotent parts, the counters, are guarded by the deduplication set kept
in the same document.

Bounded memory. Counters keep one bucket per 15-minute UTC slot that holds
events, only for slots that can still fall in the 90-day window; the
deduplication set keeps event ids for the deduplication horizon; the
business-message times behind ``first_business_reply_to_last_ctwa`` are capped
(see ``BUSINESS_TIMES_CAP``). Nothing else grows with the number of events.

Field names in the stored document are short codes (``_DATE_CODES``); the
stored layout is versioned by ``FORMAT``.
"""

from __future__ import annotations

import bisect
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

import orjson

from schemas.events import (
    Call,
    CampaignReceived,
    ContactUpdated,
    Event,
    LinkClicked,
    MessageInbound,
    MessageOutbound,
    MessageRead,
)
from signals.catalog import (
    DATE_SIGNALS,
    LONGEST_WINDOW,
    SIGNAL_TYPES,
    WINDOWS,
    Counter,
    SignalType,
)
from signals.view import AttributeValue, ContactView
from signals.windows import (
    SLOT_US,
    US,
    from_us,
    local_date_us,
    rfc3339,
    slot_local_date,
    to_us,
    window_start,
)

#: Version of the stored document layout.
FORMAT: Final = 2

#: Business-message times kept after the latest click-to-WhatsApp message.
#: ``first_business_reply_to_last_ctwa`` is exact unless a click-to-WhatsApp
#: message arrives so late that more than this many business messages newer
#: than the previous one were already seen; then the oldest are forgotten.
BUSINESS_TIMES_CAP: Final = 8

#: Counter slots older than this are dropped. Two days more than the longest
#: window, so a tenant moving to a zone up to +/-26 h away still counts exactly.
_KEEP_SLOTS_US: Final = (LONGEST_WINDOW + 2) * 86_400 * US

_DATE_CODES: Final = {
    "contact_last_updated": "cu",
    "first_conversation_at": "fc",
    "last_message_from_contact": "mc",
    "last_message_read_by_contact": "rd",
    "last_reply_from_contact": "rp",
    "last_link_clicked": "lk",
    "last_message_from_business": "mb",
    "last_campaign_received": "cr",
    "last_inbound_call": "ic",
    "last_outbound_call": "oc",
    "last_answered_inbound_call": "ia",
    "last_answered_outbound_call": "oa",
    "last_template_sent_at": "ts",
    "last_ctwa_message_at": "ct",
    "first_business_reply_to_last_ctwa": "fr",
}
assert set(_DATE_CODES) == set(DATE_SIGNALS)

_COUNTER_CODES: Final = {
    Counter.CAMPAIGNS_RECEIVED: "r",
    Counter.CAMPAIGNS_READ: "d",
    Counter.CAMPAIGNS_REPLIED: "p",
    Counter.LINKS_CLICKED: "l",
}

# "Latest" values: code -> the string signals they feed.
_SOURCE, _CHANNEL, _TEMPLATE, _CTWA_URL = "so", "ch", "tp", "cw"

#: Stored codes -> the rule fields (``signal.<name>``) they feed.
_DATE_FIELDS: Final = {code: f"signal.{name}" for name, code in _DATE_CODES.items()}
_LATEST_FIELDS: Final = {
    _SOURCE: ("signal.contact_source",),
    _CHANNEL: ("signal.channel_type",),
    _TEMPLATE: ("signal.last_template_used", "signal.last_template_type"),
    _CTWA_URL: ("signal.last_ctwa_ad_source_url",),
}
_COUNTER_FIELDS: Final = {
    counter: tuple(f"signal.{counter.value}_{days}d" for days in WINDOWS)
    for counter in Counter
}

#: (occurred_at in µs, event_id, value): the key that decides "latest".
Stamped = tuple[int, str, Any]


#: A preset dictionary for raw DEFLATE of profile documents: the layout's keys,
#: typical values and the shape of timestamps, so even a small document
#: compresses well (about 1,040 B of JSON to about 430 B for the realistic mix
#: of ``benchmarks/memory_per_contact.py``). Stored documents name their
#: dictionary by their first byte; a new dictionary takes a new byte and the
#: old one stays here for as long as documents written with it may exist.
_ZDICT_V1: Final = (
    b'"m":{"seg_":1,"seg_":2,"seg_":3,"seg_":4,"seg_":5},"n":17,"ns":"seg_",'
    b'"s":{"-":17,"-":17},"i":["-4-4-","-","-"],'
    b'"c":{"r":[19,1083,623,379,811,645,789],"d":[19,1083,624,379],"l":[19,1083],'
    b'"p":[19,1082]},"b":[17,91323,932042,395886,55334],'
    b'"a":{"city":[17,1,"Pune"],"plan":[17,2,"gold"],"source":[17,1,"import"],'
    b'"language":[17,1,"en"],"email":[17,1,"@gmail.com"],"name":[17,1,""]},'
    b'"l":{"ch":[17,0,"whatsapp"],"so":[17,1,"api"],"tp":[17,0,["","marketing"]],'
    b'"cw":[17,0,"https://fb.me/"]},'
    b'{"f":2,"t":{"fc":17,"mc":17,"mb":17,"cu":17,"ts":17,"cr":17,"rd":17,'
    b'"lk":17,"rp":17,"ic":17,"ia":17,"oc":17,"oa":17,"ct":17,"fr":17},'
)
_ZMARK_V1: Final = b"z"


def _compress(document: bytes) -> bytes:
    """Raw DEFLATE (level 1: CPU is the scarcer resource) with the dictionary."""
    deflate = zlib.compressobj(1, zlib.DEFLATED, -15, 9, zdict=_ZDICT_V1)
    return _ZMARK_V1 + deflate.compress(document) + deflate.flush()


def _decompress(stored: bytes) -> bytes:
    if stored[:1] == _ZMARK_V1:
        inflate = zlib.decompressobj(-15, zdict=_ZDICT_V1)
        return inflate.decompress(stored[1:]) + inflate.flush()
    return stored  # plain JSON, as the layout's first version stored it


def _pack(instant_us: int) -> int | list[int]:
    """Whole seconds as one integer, others as ``[seconds, microseconds]``."""
    seconds, micros = divmod(instant_us, US)
    return seconds if not micros else [seconds, micros]


def _unpack(packed: int | list[int]) -> int:
    if isinstance(packed, int):
        return packed * US
    return packed[0] * US + packed[1]


def _deltas(buckets: dict[int, int]) -> list[int]:
    """Slot counts as a sorted list of slots (repeated per event), delta-coded."""
    out: list[int] = []
    previous = 0
    for slot in sorted(buckets):
        out.append(slot - previous)
        out.extend([0] * (buckets[slot] - 1))
        previous = slot
    return out


def _undeltas(packed: list[int]) -> dict[int, int]:
    buckets: dict[int, int] = {}
    slot = 0
    for step in packed:
        slot += step
        buckets[slot] = buckets.get(slot, 0) + 1
    return buckets


def _deltas_sorted(packed: list[int | list[int]]) -> list[int | list[int]]:
    """Sorted packed instants with each whole-second one as a step from the last."""
    out: list[int | list[int]] = []
    previous = 0
    for item in packed:
        if isinstance(item, int):
            out.append(item - previous)
            previous = item
        else:
            out.append(item)
    return out


def _undeltas_sorted(stored: list[int | list[int]]) -> list[int | list[int]]:
    out: list[int | list[int]] = []
    previous = 0
    for item in stored:
        if isinstance(item, int):
            previous += item
            out.append(previous)
        else:
            out.append(item)
    return out


def _newer(current: Stamped | None, candidate: Stamped) -> bool:
    return current is None or (candidate[0], candidate[1]) > (current[0], current[1])


@dataclass(slots=True)
class Profile:
    """The mutable in-memory form of one contact's document."""

    version: int = 0
    dates: dict[str, int] = field(default_factory=dict)
    latest: dict[str, Stamped] = field(default_factory=dict)
    attributes: dict[str, Stamped] = field(default_factory=dict)
    counters: dict[str, dict[int, int]] = field(default_factory=dict)
    business_times: list[int] = field(default_factory=list)
    seen: dict[str, int] = field(default_factory=dict)
    #: segment_id -> 2 * (changes so far) + (1 if a member now else 0)
    membership: dict[str, int] = field(default_factory=dict)
    #: When the answer of some active segment can next change by time alone.
    next_wake_us: int | None = None
    #: The segment whose answer changes at ``next_wake_us``.
    next_wake_segment: str | None = None
    #: Rule fields (``signal.x``, ``attribute.y``) whose value changed since
    #: the profile was loaded; not stored.
    touched: set[str] = field(default_factory=set, compare=False)

    # -- storage -----------------------------------------------------------

    def encode(self) -> bytes:
        """The stored form: short keys, compact instants, interned event ids."""
        ids: dict[str, int] = {}

        def stamp(v: Stamped) -> list[Any]:
            return [_pack(v[0]), ids.setdefault(v[1], len(ids)), v[2]]

        document: dict[str, Any] = {"f": FORMAT}
        if self.dates:
            document["t"] = {k: _pack(v) for k, v in self.dates.items()}
        if self.latest:
            document["l"] = {k: stamp(v) for k, v in self.latest.items()}
        if self.attributes:
            document["a"] = {k: stamp(v) for k, v in self.attributes.items()}
        if ids:
            document["i"] = list(ids)
        counters = {
            code: _deltas(buckets) for code, buckets in self.counters.items() if buckets
        }
        if counters:
            document["c"] = counters
        if self.business_times:
            document["b"] = _deltas_sorted([_pack(t) for t in self.business_times])
        if self.seen:
            # Seen-at only decides when an id is forgotten: seconds suffice.
            document["s"] = {k: v // US for k, v in self.seen.items()}
        if self.membership:
            document["m"] = self.membership
        if self.next_wake_us is not None:
            document["n"] = _pack(self.next_wake_us)
            document["ns"] = self.next_wake_segment
        return _compress(orjson.dumps(document))

    @classmethod
    def decode(cls, raw: bytes, version: int) -> Profile:
        document = orjson.loads(_decompress(raw))
        ids = document.get("i", [])

        def stamped(v: list[Any]) -> Stamped:
            return (_unpack(v[0]), ids[v[1]], v[2])

        wake = document.get("n")
        return cls(
            version=version,
            dates={k: _unpack(v) for k, v in document.get("t", {}).items()},
            latest={k: stamped(v) for k, v in document.get("l", {}).items()},
            attributes={k: stamped(v) for k, v in document.get("a", {}).items()},
            counters={
                code: _undeltas(packed)
                for code, packed in document.get("c", {}).items()
            },
            business_times=[
                _unpack(t) for t in _undeltas_sorted(document.get("b", []))
            ],
            seen={k: v * US for k, v in document.get("s", {}).items()},
            membership=document.get("m", {}),
            next_wake_us=None if wake is None else _unpack(wake),
            next_wake_segment=document.get("ns"),
        )

    @property
    def exists(self) -> bool:
        """A contact exists from its first accepted event."""
        return self.version > 0 or bool(self.seen) or bool(self.dates)

    # -- the fold ------------------------------------------------------------

    def apply(
        self, event: Event, tz: ZoneInfo, now_us: int, dedup_horizon_us: int
    ) -> bool:
        """Fold one event in; False when it is a duplicate and changed nothing."""
        # 1. Deduplicate first: counters are the one non-idempotent merge.
        self._forget_seen(now_us - dedup_horizon_us)
        if event.event_id in self.seen:
            return False
        self.seen[event.event_id] = now_us

        # 2. Signals every event type feeds; remember what changes.
        dates_before = dict(self.dates)
        latest_before = dict(self.latest)
        at = to_us(event.occurred_at)
        eid = event.event_id
        if event.channel is not None:
            self._latest(_CHANNEL, (at, eid, event.channel))

        # 3. Per-type signals.
        counts_from = self._counting_starts(tz, now_us)
        match event:
            case ContactUpdated(data=data):
                self._max("cu", at)
                if data.source is not None:
                    self._latest(_SOURCE, (at, eid, data.source))
                for name, value in data.attributes.items():
                    stamped: Stamped = (at, eid, value)
                    if _newer(self.attributes.get(name), stamped):
                        self.attributes[name] = stamped
                        self.touched.add(f"attribute.{name}")
            case MessageInbound(data=data):
                self._min("fc", at)
                self._max("mc", at)
                if data.reply_to is not None:
                    self._max("rp", at)
                    if data.reply_to.campaign_id is not None:
                        self._count(Counter.CAMPAIGNS_REPLIED, at, counts_from)
                if data.ctwa is not None:
                    self._latest(_CTWA_URL, (at, eid, data.ctwa.ad_source_url))
                    self._ctwa_message(at)
            case MessageOutbound(data=data) | CampaignReceived(data=data):
                self._business_message(at, eid, data.template)
                if isinstance(event, CampaignReceived):
                    self._max("cr", at)
                    self._count(Counter.CAMPAIGNS_RECEIVED, at, counts_from)
            case MessageRead(data=data):
                self._max("rd", at)
                if data.campaign_id is not None:
                    self._count(Counter.CAMPAIGNS_READ, at, counts_from)
            case LinkClicked():
                self._max("lk", at)
                self._count(Counter.LINKS_CLICKED, at, counts_from)
            case Call(data=data):
                inbound = data.direction == "inbound"
                self._max("ic" if inbound else "oc", at)
                if data.answered:
                    self._max("ia" if inbound else "oa", at)

        # 4. Drop counter slots that can no longer fall in any window.
        self._forget_slots(now_us - _KEEP_SLOTS_US)

        # 5. Name the changed signals, so unaffected segments can be skipped.
        for code in dates_before.keys() | self.dates.keys():
            if dates_before.get(code) != self.dates.get(code):
                self.touched.add(_DATE_FIELDS[code])
        for code, stamped in self.latest.items():
            if latest_before.get(code) is not stamped:
                self.touched.update(_LATEST_FIELDS[code])
        return True

    def _max(self, code: str, at: int) -> None:
        if at > self.dates.get(code, -(2**62)):
            self.dates[code] = at

    def _min(self, code: str, at: int) -> None:
        if at < self.dates.get(code, 2**62):
            self.dates[code] = at

    def _latest(self, code: str, stamped: Stamped) -> None:
        if _newer(self.latest.get(code), stamped):
            self.latest[code] = stamped

    def _counting_starts(self, tz: ZoneInfo, now_us: int) -> date:
        """Events on local dates before this never count in any window again."""
        return window_start(local_date_us(now_us, tz), LONGEST_WINDOW)

    def _count(self, counter: Counter, at: int, counts_from: date) -> None:
        slot = at // SLOT_US
        # A cheap UTC check with a day of margin; an event just past the edge
        # is kept here and excluded exactly when counts are read by local date.
        if from_us(at).date() < counts_from - timedelta(days=1):
            return
        buckets = self.counters.setdefault(_COUNTER_CODES[counter], {})
        buckets[slot] = buckets.get(slot, 0) + 1
        self.touched.update(_COUNTER_FIELDS[counter])

    def _business_message(self, at: int, eid: str, template: Any) -> None:
        self._min("fc", at)
        self._max("mb", at)
        if template is not None:
            self._max("ts", at)
            self._latest(_TEMPLATE, (at, eid, [template.name, template.type]))
        ctwa = self.dates.get("ct")
        if ctwa is not None and at < ctwa:
            return
        times = self.business_times
        if at not in times:
            bisect.insort(times, at)
            if len(times) > BUSINESS_TIMES_CAP:
                # Keep the current answer (the oldest time after the latest
                # click-to-WhatsApp message) and the most recent others.
                keep_first = 1 if ctwa is not None else 0
                kept = times[-(BUSINESS_TIMES_CAP - keep_first) :]
                self.business_times = times[:keep_first] + kept
        self._first_reply()

    def _ctwa_message(self, at: int) -> None:
        if at <= self.dates.get("ct", -(2**62)):
            return
        self.dates["ct"] = at
        cut = bisect.bisect_left(self.business_times, at)
        del self.business_times[:cut]
        self._first_reply()

    def _first_reply(self) -> None:
        ctwa = self.dates.get("ct")
        if ctwa is None:
            return
        if self.business_times:
            self.dates["fr"] = self.business_times[0]
        else:
            self.dates.pop("fr", None)

    def _forget_seen(self, before_us: int) -> None:
        if self.seen and min(self.seen.values()) < before_us:
            self.seen = {e: t for e, t in self.seen.items() if t >= before_us}

    def _forget_slots(self, before_us: int) -> None:
        oldest_slot = before_us // SLOT_US
        for buckets in self.counters.values():
            for slot in [s for s in buckets if s < oldest_slot]:
                del buckets[slot]

    # -- read-out --------------------------------------------------------------

    def view(self, tenant_id: str, contact_id: str, tz: ZoneInfo) -> ContactView:
        """The view rules and the API read, in the tenant's time zone.

        Dates and counter days are converted when a rule first reads them: a
        contact is re-evaluated on every change, and most rules read a few of
        its 32 signals.
        """
        strings: dict[str, str] = {}
        for code, name in ((_SOURCE, "contact_source"), (_CHANNEL, "channel_type")):
            if code in self.latest:
                strings[name] = self.latest[code][2]
        if _TEMPLATE in self.latest:
            template_name, template_type = self.latest[_TEMPLATE][2]
            strings["last_template_used"] = template_name
            strings["last_template_type"] = template_type
        if _CTWA_URL in self.latest:
            strings["last_ctwa_ad_source_url"] = self.latest[_CTWA_URL][2]
        return ContactView(
            tenant_id=tenant_id,
            contact_id=contact_id,
            dates=_Dates(self.dates),
            strings=strings,
            counter_days=_CounterDays(self.counters, tz),
            attributes=self.current_attributes(),
        )

    def current_attributes(self) -> dict[str, AttributeValue]:
        return {k: v[2] for k, v in self.attributes.items() if v[2] is not None}


class _Dates(Mapping[str, datetime]):
    """Date signals by name, as instants, converted on first read."""

    __slots__ = ("_by_code", "_cache")

    def __init__(self, by_code: dict[str, int]) -> None:
        self._by_code = by_code
        self._cache: dict[str, datetime] = {}

    def __getitem__(self, name: str) -> datetime:
        cached = self._cache.get(name)
        if cached is None:
            cached = from_us(self._by_code[_DATE_CODES[name]])
            self._cache[name] = cached
        return cached

    def get(self, name: str, default: Any = None) -> Any:
        code = _DATE_CODES.get(name)
        if code is None or code not in self._by_code:
            return default
        return self[name]

    def __contains__(self, name: object) -> bool:
        code = _DATE_CODES.get(name) if isinstance(name, str) else None
        return code is not None and code in self._by_code

    def __iter__(self) -> Iterator[str]:
        return (name for name, code in _DATE_CODES.items() if code in self._by_code)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _CounterDays(Mapping[Counter, Sequence[tuple[date, int]]]):
    """Per counter, ``(local date, count)`` in the tenant's zone, on first read."""

    __slots__ = ("_by_code", "_cache", "_tz")

    def __init__(self, by_code: dict[str, dict[int, int]], tz: ZoneInfo) -> None:
        self._by_code = by_code
        self._tz = tz
        self._cache: dict[Counter, list[tuple[date, int]]] = {}

    def __getitem__(self, counter: Counter) -> list[tuple[date, int]]:
        cached = self._cache.get(counter)
        if cached is None:
            slots = self._by_code.get(_COUNTER_CODES[counter])
            if not slots:
                raise KeyError(counter)
            per_day: dict[date, int] = {}
            for slot, n in slots.items():
                day = slot_local_date(slot, self._tz)
                per_day[day] = per_day.get(day, 0) + n
            cached = sorted(per_day.items())
            self._cache[counter] = cached
        return cached

    def get(self, counter: Counter, default: Any = None) -> Any:
        try:
            return self[counter]
        except KeyError:
            return default

    def __iter__(self) -> Iterator[Counter]:
        return (c for c, code in _COUNTER_CODES.items() if self._by_code.get(code))

    def __len__(self) -> int:
        return sum(1 for _ in self)


def signals_json(view: ContactView, today: date) -> dict[str, str | int | None]:
    """All 32 signals as the HTTP API returns them (dates RFC 3339 UTC)."""
    out: dict[str, str | int | None] = {}
    for name, kind in SIGNAL_TYPES.items():
        if kind is SignalType.DATE:
            instant = view.dates.get(name)
            out[name] = None if instant is None else rfc3339(to_us(instant))
        elif kind is SignalType.COUNT:
            out[name] = view.count(name, today)
        else:
            out[name] = view.strings.get(name)
    return out
