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

Storage. The in-memory form is the stored document itself (short codes as
keys, instants in microseconds, "latest" values as ``(occurred_at, event_id,
value)``, stored as JSON arrays), so writing a profile is two ``orjson.dumps``
(what views read, then on a second line what only the fold reads; see
``_document``) and one compression, and reading it is the reverse; only
counter slots and business-message times are delta-coded on the way.
Documents are compressed with zstd and a preset dictionary (``_ZDICT_V3``).
The stored layout is versioned by ``FORMAT``; the previous layouts (``FORMAT``
3, one line; ``FORMAT`` 2, DEFLATE) still read, and are written in the current
one the next time the contact changes.
"""

from __future__ import annotations

import bisect
import itertools
import operator
import os
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any, Final, cast
from zoneinfo import ZoneInfo

import orjson
import zstandard

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
    COUNT_SIGNALS,
    DATE_SIGNALS,
    LONGEST_WINDOW,
    SIGNAL_TYPES,
    WINDOWS,
    Counter,
    SignalType,
)
from signals.view import AttributeValue, ContactView

try:
    from profilestream_native import Reader as _NativeReader
    from profilestream_native import StoredProfile as _NativeProfile
except ImportError:  # the compiled reader is optional (see ``NativeView``)
    _NativeReader = None  # type: ignore[assignment,misc]
from signals.windows import (
    SLOT_US,
    US,
    from_us,
    local_date_us,
    rfc3339,
    slot_local_date,
    start_of_local_day,
    to_us,
    window_start,
)

#: Version of the stored document layout.
FORMAT: Final = 4

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
    _SOURCE: frozenset({"signal.contact_source"}),
    _CHANNEL: frozenset({"signal.channel_type"}),
    _TEMPLATE: frozenset({"signal.last_template_used", "signal.last_template_type"}),
    _CTWA_URL: frozenset({"signal.last_ctwa_ad_source_url"}),
}
_COUNTER_FIELDS: Final = {
    counter: frozenset(f"signal.{counter.value}_{days}d" for days in WINDOWS)
    for counter in Counter
}

#: ``(occurred_at in µs, event_id, value)``: the first two decide "latest".
#: Tuples, as everything a profile holds: a cached profile is then almost
#: invisible to Python's cyclic garbage collector, whose full passes would
#: otherwise walk every cached profile.
Stamped = tuple[int, str, Any]


#: The preset dictionary of the previous layout's raw DEFLATE (``FORMAT`` 2),
#: kept to read documents written with it; stored documents name their
#: compression by their first byte.
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

# What the dictionaries of layouts 3 and 4 share: attributes, "latest"
# values and counters (first), and the date signals (last, after the layout's
# version).
_ZDICT_FIELDS: Final = (
    b'"a":{"email":[1780000000000000,"","@gmail.com"],"name":[178,"",""],'
    b'"city":[1780000000000000,"","Pune"],"signup":[178,"","2025-01-01"],'
    b'"plan":[1780000000000000,"","platinum"],"source":[178,"","import"],'
    b'"language":[1780000000000000,"","en"]},'
    b'"l":{"so":[1780000000000000,"","api"],"cw":[178,"","https://fb.me/ad/"],'
    b'"tp":[1780000000000000,"",["promo_","marketing"]],'
    b'"ch":[1780000000000000,"","whatsapp"]},'
    b'"c":{"r":[1978000,623,0,379,811,645],"d":[1978000,624,379],'
    b'"l":[1978000,1083],"p":[1978000,1082]},'
)
_ZDICT_DATES: Final = (
    b'"t":{"fc":1780000000000000,"mc":1780000000000000,'
    b'"mb":1780000000000000,"cu":1780000000000000,"ts":1780000000000000,'
    b'"cr":1780000000000000,"rd":1780000000000000,"lk":1780000000000000,'
    b'"rp":1780000000000000,"ic":1780000000000000,"ia":1780000000000000,'
    b'"oc":1780000000000000,"oa":1780000000000000,"ct":1780000000000000,'
    b'"fr":1780000000000000},'
)

#: The preset dictionary of layout 3 (one line), kept to read documents
#: written with it.
_ZDICT_V2: Final = (
    _ZDICT_FIELDS + b'"b":[1780000000000000,91323000000,932042000000],'
    b'"m":{"seg_":1,"seg_":2,"seg_":3,"seg_":4,"seg_":5},'
    b'"n":1780000000000000,"ns":"seg_",'
    b'"s":{"-":1780000000,"-":1780000000,"-":1780000000}}'
    b'{"f":3,' + _ZDICT_DATES
)
_ZMARK_V2: Final = b"y"

#: The preset dictionary of the current layout: its keys, typical values and
#: the shape of instants, most common last (zstd reaches the end of a
#: dictionary most cheaply), with the break between the two lines where
#: layout 4 has it (with the previous dictionary, layout 4's documents came
#: out 8 to 10 bytes longer; with this one they are as long as layout 3's).
#: A new dictionary takes a new marker byte, and the old one stays for as
#: long as documents written with it may exist.
_ZDICT_V3: Final = (
    _ZDICT_FIELDS + b'"m":{"seg_":1,"seg_":2,"seg_":3,"seg_":4,"seg_":5},'
    b'"n":1780000000000000,"ns":"seg_"}\n'
    b'{"b":[1780000000000000,91323000000,932042000000],'
    b'"s":{"-":1780000000,"-":1780000000,"-":1780000000}}'
    b'{"f":4,' + _ZDICT_DATES
)
_ZMARK_V3: Final = b"x"

# zstd frames without magic number, checksum or dictionary id: the marker
# byte says what follows, Redis keeps the bytes intact, and each field dropped
# is a few bytes of every stored profile. The content size stays: with it the
# reader allocates exactly the document's size.
_ZSTD_PARAMS: Final = zstandard.ZstdCompressionParameters.from_level(
    1,
    format=zstandard.FORMAT_ZSTD1_MAGICLESS,
    write_checksum=0,
    write_content_size=1,
    write_dict_id=0,
)


def _zstd_dict(content: bytes) -> zstandard.ZstdCompressionDict:
    return zstandard.ZstdCompressionDict(
        content, dict_type=zstandard.DICT_TYPE_RAWCONTENT
    )


_ZSTD_DICT: Final = _zstd_dict(_ZDICT_V3)
_ZSTD_DICT.precompute_compress(compression_params=_ZSTD_PARAMS)
_COMPRESSOR: Final = zstandard.ZstdCompressor(
    dict_data=_ZSTD_DICT, compression_params=_ZSTD_PARAMS
)
_DECOMPRESSOR: Final = zstandard.ZstdDecompressor(
    dict_data=_ZSTD_DICT, format=zstandard.FORMAT_ZSTD1_MAGICLESS
)
_DECOMPRESSOR_V2: Final = zstandard.ZstdDecompressor(
    dict_data=_zstd_dict(_ZDICT_V2), format=zstandard.FORMAT_ZSTD1_MAGICLESS
)


def _native_reader() -> _NativeReader | None:
    """The compiled reader of layouts 3 and 4 (``native/``), when it is
    installed and not turned off with ``PROFILESTREAM_NATIVE=0``."""
    if _NativeReader is None or os.environ.get("PROFILESTREAM_NATIVE") == "0":
        return None
    return _NativeReader({_ZMARK_V3[0]: _ZDICT_V3, _ZMARK_V2[0]: _ZDICT_V2})


#: Read-only views of stored profiles use it when set (tests set it to None
#: to hold the Python reader to the same answers).
NATIVE: _NativeReader | None = _native_reader()


def _compress(document: bytes) -> bytes:
    return _ZMARK_V3 + _COMPRESSOR.compress(document)


def _decompress(stored: bytes) -> bytes:
    marker = stored[:1]
    if marker == _ZMARK_V3:
        document: bytes = _DECOMPRESSOR.decompress(stored[1:])
        return document
    if marker == _ZMARK_V2:
        document = _DECOMPRESSOR_V2.decompress(stored[1:])
        return document
    if marker == _ZMARK_V1:
        inflate = zlib.decompressobj(-15, zdict=_ZDICT_V1)
        return inflate.decompress(stored[1:]) + inflate.flush()
    return stored  # plain JSON, as the layout's first version stored it


def _document(stored: bytes, *, whole: bool) -> dict[str, Any]:
    """A stored profile's document; with ``whole=False`` only what views read.

    From layout 4 on, the document is two JSON objects on two lines: first
    everything a view or a backfill's look reads (dates, "latest" values,
    attributes, counters, memberships, wake-up), then what only the fold
    needs (business-message times, deduplication ids), so that a walk over
    every contact parses about two thirds of each document. orjson never
    writes a raw newline, and earlier layouts are one line.
    """
    text = _decompress(stored)
    end = text.find(b"\n")
    if end < 0:
        document: dict[str, Any] = orjson.loads(text)
        return document
    document = orjson.loads(text[:end])
    if whole:
        document.update(orjson.loads(text[end + 1 :]))
    return document


def _inserted(ascending: tuple[int, ...], value: int) -> tuple[int, ...]:
    at = bisect.bisect_right(ascending, value)
    return (*ascending[:at], value, *ascending[at:])


def _steps(ascending: Sequence[int]) -> list[int]:
    """A sorted list as its first item and the steps between neighbours."""
    return list(map(operator.sub, ascending, [0, *ascending]))


def _unsteps(steps: list[int]) -> tuple[int, ...]:
    return tuple(itertools.accumulate(steps))


# -- the previous layout (FORMAT 2), read only ---------------------------------------


def _unpack(packed: int | list[int]) -> int:
    """Whole seconds as one integer, others as ``[seconds, microseconds]``."""
    if isinstance(packed, int):
        return packed * US
    return packed[0] * US + packed[1]


def _undeltas_sorted(stored: list[int | list[int]]) -> list[int]:
    out: list[int] = []
    previous = 0
    for item in stored:
        if isinstance(item, int):
            previous += item
            out.append(previous * US)
        else:
            out.append(_unpack(item))
    return out


def _decode_v2(document: dict[str, Any]) -> dict[str, Any]:
    """A FORMAT 2 document as the fields of a current one."""
    ids = document.get("i", [])

    def stamped(v: list[Any]) -> Stamped:
        return _stamped([_unpack(v[0]), ids[v[1]], v[2]])

    wake = document.get("n")
    return {
        "dates": {k: _unpack(v) for k, v in document.get("t", {}).items()},
        "latest": {k: stamped(v) for k, v in document.get("l", {}).items()},
        "attributes": {k: stamped(v) for k, v in document.get("a", {}).items()},
        "counters": {
            code: _unsteps(packed) for code, packed in document.get("c", {}).items()
        },
        "business_times": tuple(sorted(_undeltas_sorted(document.get("b", [])))),
        "seen": document.get("s", {}),
        "membership": document.get("m", {}),
        "next_wake_us": None if wake is None else _unpack(wake),
        "next_wake_segment": document.get("ns"),
    }


@lru_cache(maxsize=4096)
def _first_slot(day: date, tz: ZoneInfo) -> int:
    """The first 15-minute slot of local date ``day`` in ``tz``."""
    return to_us(start_of_local_day(day, tz)) // SLOT_US


@lru_cache(maxsize=64)
def _counting_cutoff_us(now_us: int, tz: ZoneInfo) -> int:
    """Events before this instant never count in any window again.

    A day before the first local date of the longest window, at UTC midnight:
    a cheap test with a day of margin for any zone (called with one "now" for
    a whole batch, hence the cache).
    """
    oldest = window_start(local_date_us(now_us, tz), LONGEST_WINDOW)
    margin = oldest - timedelta(days=1)
    return to_us(datetime(margin.year, margin.month, margin.day, tzinfo=UTC))


def _stamped(stored: list[Any]) -> Stamped:
    at, event_id, value = stored
    return (at, event_id, tuple(value) if isinstance(value, list) else value)


def _newer(current: Stamped | None, candidate: Stamped) -> bool:
    return current is None or (candidate[0], candidate[1]) > (current[0], current[1])


#: ``Profile.touched`` of a profile nothing has touched yet (one shared object).
UNTOUCHED: Final[frozenset[str]] = frozenset()


@dataclass(slots=True)
class Profile:
    """The mutable in-memory form of one contact's document."""

    version: int = 0
    #: Date signal code -> instant (µs).
    dates: dict[str, int] = field(default_factory=dict)
    #: Code of a "latest" value -> ``(occurred_at µs, event_id, value)``.
    latest: dict[str, Stamped] = field(default_factory=dict)
    #: Attribute name -> ``(occurred_at µs, event_id, value or None)``.
    attributes: dict[str, Stamped] = field(default_factory=dict)
    #: Counter code -> the 15-minute UTC slot of every counted event, ascending.
    counters: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: Business-message times after the latest click-to-WhatsApp message (µs).
    business_times: tuple[int, ...] = ()
    #: Event id -> when it was first seen, in whole seconds.
    seen: dict[str, int] = field(default_factory=dict)
    #: segment_id -> 2 * (changes so far) + (1 if a member now else 0)
    membership: dict[str, int] = field(default_factory=dict)
    #: When the answer of some active segment can next change by time alone.
    next_wake_us: int | None = None
    #: The segment whose answer changes at ``next_wake_us``.
    next_wake_segment: str | None = None
    #: Rule fields (``signal.x``, ``attribute.y``) whose value changed since
    #: the profile was loaded; not stored.
    touched: frozenset[str] = field(default=UNTOUCHED, compare=False)

    # -- storage -----------------------------------------------------------

    def encode(self) -> bytes:
        """The stored form: the fields as they are, counters delta-coded."""
        document: dict[str, Any] = {"f": FORMAT}
        if self.dates:
            document["t"] = self.dates
        if self.latest:
            document["l"] = self.latest
        if self.attributes:
            document["a"] = self.attributes
        counters = {
            code: _steps(slots) for code, slots in self.counters.items() if slots
        }
        if counters:
            document["c"] = counters
        if self.membership:
            document["m"] = self.membership
        if self.next_wake_us is not None:
            document["n"] = self.next_wake_us
            document["ns"] = self.next_wake_segment
        # What only the fold reads goes after a newline (see ``_document``).
        private: dict[str, Any] = {}
        if self.business_times:
            private["b"] = _steps(self.business_times)
        if self.seen:
            private["s"] = self.seen
        head = orjson.dumps(document)
        if private:
            return _compress(head + b"\n" + orjson.dumps(private))
        return _compress(head)

    @classmethod
    def decode(cls, raw: bytes, version: int) -> Profile:
        document = _document(raw, whole=True)
        if document.get("f", 1) < 3:
            return cls(version=version, **_decode_v2(document))
        return cls(
            version=version,
            dates=document.get("t", {}),
            latest={k: _stamped(v) for k, v in document.get("l", {}).items()},
            attributes={k: _stamped(v) for k, v in document.get("a", {}).items()},
            counters={
                code: _unsteps(steps) for code, steps in document.get("c", {}).items()
            },
            business_times=_unsteps(document.get("b", [])),
            seen=document.get("s", {}),
            membership=document.get("m", {}),
            next_wake_us=document.get("n"),
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
        self._forget_seen((now_us - dedup_horizon_us) // US)
        if event.event_id in self.seen:
            return False
        self.seen[event.event_id] = now_us // US

        # 2. Signals every event type feeds. Every merge that changes a value
        #    names the rule fields it feeds in ``touched``, so segments that
        #    read none of them can be skipped.
        at = to_us(event.occurred_at)
        eid = event.event_id
        if event.channel is not None:
            self._latest(_CHANNEL, (at, eid, event.channel))

        # 3. Per-type signals.
        match event:
            case ContactUpdated(data=data):
                self._max("cu", at)
                if data.source is not None:
                    self._latest(_SOURCE, (at, eid, data.source))
                for name, value in data.attributes.items():
                    stamped: Stamped = (at, eid, value)
                    if _newer(self.attributes.get(name), stamped):
                        self.attributes[name] = stamped
                        self.touched |= {f"attribute.{name}"}
            case MessageInbound(data=data):
                self._min("fc", at)
                self._max("mc", at)
                if data.reply_to is not None:
                    self._max("rp", at)
                    if data.reply_to.campaign_id is not None:
                        self._count(Counter.CAMPAIGNS_REPLIED, at, tz, now_us)
                if data.ctwa is not None:
                    self._latest(_CTWA_URL, (at, eid, data.ctwa.ad_source_url))
                    self._ctwa_message(at)
            case MessageOutbound(data=data) | CampaignReceived(data=data):
                self._business_message(at, eid, data.template)
                if isinstance(event, CampaignReceived):
                    self._max("cr", at)
                    self._count(Counter.CAMPAIGNS_RECEIVED, at, tz, now_us)
            case MessageRead(data=data):
                self._max("rd", at)
                if data.campaign_id is not None:
                    self._count(Counter.CAMPAIGNS_READ, at, tz, now_us)
            case LinkClicked():
                self._max("lk", at)
                self._count(Counter.LINKS_CLICKED, at, tz, now_us)
            case Call(data=data):
                inbound = data.direction == "inbound"
                self._max("ic" if inbound else "oc", at)
                if data.answered:
                    self._max("ia" if inbound else "oa", at)

        # 4. Drop counter slots that can no longer fall in any window.
        self._forget_slots(now_us - _KEEP_SLOTS_US)
        return True

    def _set_date(self, code: str, at: int) -> None:
        self.dates[code] = at
        self.touched |= {_DATE_FIELDS[code]}

    def _max(self, code: str, at: int) -> None:
        if at > self.dates.get(code, -(2**62)):
            self._set_date(code, at)

    def _min(self, code: str, at: int) -> None:
        if at < self.dates.get(code, 2**62):
            self._set_date(code, at)

    def _latest(self, code: str, stamped: Stamped) -> None:
        if _newer(self.latest.get(code), stamped):
            self.latest[code] = stamped
            self.touched |= _LATEST_FIELDS[code]

    def _count(self, counter: Counter, at: int, tz: ZoneInfo, now_us: int) -> None:
        # A cheap UTC check with a day of margin; an event just past the edge
        # is kept here and excluded exactly when counts are read by local date.
        if at < _counting_cutoff_us(now_us, tz):
            return
        code = _COUNTER_CODES[counter]
        self.counters[code] = _inserted(self.counters.get(code, ()), at // SLOT_US)
        self.touched |= _COUNTER_FIELDS[counter]

    def _business_message(self, at: int, eid: str, template: Any) -> None:
        self._min("fc", at)
        self._max("mb", at)
        if template is not None:
            self._max("ts", at)
            self._latest(_TEMPLATE, (at, eid, (template.name, template.type)))
        ctwa = self.dates.get("ct")
        if ctwa is not None and at < ctwa:
            return
        times = self.business_times
        if at not in times:
            times = self.business_times = _inserted(times, at)
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
        self._set_date("ct", at)
        cut = bisect.bisect_left(self.business_times, at)
        self.business_times = self.business_times[cut:]
        self._first_reply()

    def _first_reply(self) -> None:
        ctwa = self.dates.get("ct")
        if ctwa is None:
            return
        if self.business_times:
            if self.dates.get("fr") != self.business_times[0]:
                self._set_date("fr", self.business_times[0])
        elif self.dates.pop("fr", None) is not None:
            self.touched |= {_DATE_FIELDS["fr"]}

    def _forget_seen(self, before_s: int) -> None:
        # Ids are added in the order they are seen, so the first is the oldest
        # (up to the skew of workers' clocks, which only keeps an id a little
        # longer than the horizon): a look at one entry, not a scan per event.
        seen = self.seen
        if seen and next(iter(seen.values())) < before_s:
            self.seen = {e: t for e, t in seen.items() if t >= before_s}

    def _forget_slots(self, before_us: int) -> None:
        oldest_slot = before_us // SLOT_US
        for code, slots in self.counters.items():
            if slots and slots[0] < oldest_slot:
                self.counters[code] = slots[bisect.bisect_left(slots, oldest_slot) :]

    # -- read-out --------------------------------------------------------------

    def view(self, tenant_id: str, contact_id: str, tz: ZoneInfo) -> ContactView:
        """The view rules and the API read, in the tenant's time zone.

        See ``ProfileView``: what a rule reads is converted when read.
        """
        return ProfileView(
            tenant_id,
            contact_id,
            self.dates,
            self.latest,
            self.attributes,
            tz,
            slots=self.counters,
        )

    def state(self, tenant_id: str, contact_id: str, tz: ZoneInfo) -> StoredState:
        """What ``stored_state`` reads of this profile once stored."""
        return StoredState(
            self.view(tenant_id, contact_id, tz),
            self.membership,
            self.next_wake_us,
            self.next_wake_segment,
        )

    def current_attributes(self) -> dict[str, AttributeValue]:
        return _current(self.attributes)


def stored_view(
    stored: bytes, tenant_id: str, contact_id: str, tz: ZoneInfo
) -> ContactView:
    """The view of a stored profile, for reads that never write it back.

    Preview and snapshot evaluate one rule over every contact of a tenant; this
    skips what they never read (the deduplication set, the business-message
    times) and rebuilds a counter's slots only when a rule reads that counter.
    With the compiled reader (``NATIVE``), the document never becomes Python
    objects at all (see ``NativeView``).
    """
    native = NATIVE
    if native is not None and stored and native.reads(stored[0]):
        return NativeView(tenant_id, contact_id, native.read(stored), tz)
    return _document_view(_document(stored, whole=False), tenant_id, contact_id, tz)


def _document_view(
    document: dict[str, Any], tenant_id: str, contact_id: str, tz: ZoneInfo
) -> ContactView:
    if document.get("f", 1) < 3:
        return Profile(**_decode_v2(document)).view(tenant_id, contact_id, tz)
    return ProfileView(
        tenant_id,
        contact_id,
        document.get("t", {}),
        document.get("l", {}),
        document.get("a", {}),
        tz,
        steps=document.get("c", {}),
    )


@dataclass(frozen=True, slots=True)
class StoredState:
    """What a read-only walk needs of a stored profile: its view, and the
    recorded answers and wake-up that decide whether evaluating a segment
    would change anything (see ``Engine.backfill``)."""

    view: ContactView
    #: As ``Profile.membership``.
    membership: Mapping[str, int]
    next_wake_us: int | None
    next_wake_segment: str | None


def stored_state(
    stored: bytes, tenant_id: str, contact_id: str, tz: ZoneInfo
) -> StoredState:
    """``stored_view``, with the recorded memberships and wake-up beside it."""
    native = NATIVE
    if native is not None and stored and native.reads(stored[0]):
        read = native.read(stored)
        return StoredState(
            NativeView(tenant_id, contact_id, read, tz),
            read.membership(),
            read.next_wake_us,
            read.next_wake_segment,
        )
    document = _document(stored, whole=False)
    if document.get("f", 1) < 3:
        return Profile(**_decode_v2(document)).state(tenant_id, contact_id, tz)
    return StoredState(
        _document_view(document, tenant_id, contact_id, tz),
        document.get("m", {}),
        document.get("n"),
        document.get("ns"),
    )


def _current(attributes: Mapping[str, Sequence[Any]]) -> dict[str, AttributeValue]:
    return {k: v[2] for k, v in attributes.items() if v[2] is not None}


class _StoredCounters(Mapping[str, Sequence[int]]):
    """Counter slots by code from their stored steps, each rebuilt on first read."""

    __slots__ = ("_cache", "_steps")

    def __init__(self, steps: Mapping[str, list[int]]) -> None:
        self._steps = steps
        self._cache: dict[str, tuple[int, ...]] = {}

    def __getitem__(self, code: str) -> tuple[int, ...]:
        slots = self._cache.get(code)
        if slots is None:
            slots = _unsteps(self._steps[code])
            self._cache[code] = slots
        return slots

    def __iter__(self) -> Iterator[str]:
        return iter(self._steps)

    def __len__(self) -> int:
        return len(self._steps)


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

    def __init__(self, by_code: Mapping[str, Sequence[int]], tz: ZoneInfo) -> None:
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
            for slot, same in itertools.groupby(slots):
                day = slot_local_date(slot, self._tz)
                per_day[day] = per_day.get(day, 0) + sum(1 for _ in same)
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


@lru_cache(maxsize=1024)
def _window_slots(signal: str, today: date, tz: ZoneInfo) -> tuple[str, int]:
    """A counter signal's stored code and the first slot of its window on
    ``today``: the same for every contact of a walk or a batch, hence cached."""
    counter, days = COUNT_SIGNALS[signal]
    return _COUNTER_CODES[counter], _first_slot(window_start(today, days), tz)


def _local_days(slots: Iterable[int], tz: ZoneInfo) -> list[date]:
    """The distinct local dates of ascending slots, in order."""
    out: list[date] = []
    for slot in slots:
        day = slot_local_date(slot, tz)
        if not out or out[-1] != day:
            out.append(day)
    return out


class ProfileView(ContactView):
    """A contact's view over its profile's own fields, held or stored.

    One object per contact, built in a few assignments: a walk builds one for
    every contact and most rules read a few of its 32 signals, so everything
    else is converted when first read. The reads rules make most work on the
    profile's integers:

    * a date signal's local date is its 15-minute slot's (cached by slot);
    * a counter's value on a day is the number of its slots from the first
      one of its window, found by bisection: all instants of a slot share
      their local date, local dates never decrease with slots, and local
      midnight is always a slot boundary. A stored profile keeps slots as
      steps (see ``Profile.encode``); they are summed up for the counters a
      rule reads, once.

    The fields are the profile's own (tuples when held, lists when stored),
    not copies: a view is read before its profile changes again.
    """

    __slots__ = (
        "_attributes",
        "_by_code",
        "_dates",
        "_latest",
        "_slots",
        "_stamped_attributes",
        "_steps",
        "_strings",
        "_tz",
        "contact_id",
        "tenant_id",
    )

    def __init__(
        self,
        tenant_id: str,
        contact_id: str,
        dates: dict[str, int],
        latest: Mapping[str, Sequence[Any]],
        attributes: Mapping[str, Sequence[Any]],
        tz: ZoneInfo,
        *,
        slots: dict[str, tuple[int, ...]] | None = None,
        steps: Mapping[str, list[int]] | None = None,
    ) -> None:
        """``slots``: a held profile's counters; ``steps``: a stored one's."""
        self.tenant_id = tenant_id
        self.contact_id = contact_id
        self._by_code = dates
        self._latest = latest
        self._stamped_attributes = attributes
        self._tz = tz
        self._slots = slots
        self._steps = steps
        self._dates: _Dates | None = None
        self._strings: dict[str, str] | None = None
        self._attributes: dict[str, AttributeValue] | None = None

    @property
    def dates(self) -> Mapping[str, datetime]:
        dates = self._dates
        if dates is None:
            dates = self._dates = _Dates(self._by_code)
        return dates

    @property
    def strings(self) -> Mapping[str, str]:
        strings = self._strings
        if strings is None:
            strings = self._strings = _strings(self._latest)
        return strings

    @property
    def attributes(self) -> Mapping[str, AttributeValue]:
        attributes = self._attributes
        if attributes is None:
            attributes = self._attributes = _current(self._stamped_attributes)
        return attributes

    @property
    def counter_days(self) -> Mapping[Counter, Sequence[tuple[date, int]]]:
        if self._steps is not None:
            return _CounterDays(_StoredCounters(self._steps), self._tz)
        return _CounterDays(self._slots or {}, self._tz)

    def attribute(self, name: str) -> AttributeValue | None:
        stamped = self._stamped_attributes.get(name)
        return None if stamped is None else stamped[2]

    def string(self, signal: str) -> str | None:
        return _string(self._latest, signal)

    def local_date(self, signal: str, tz: ZoneInfo) -> date | None:
        instant = self._by_code.get(_DATE_CODES[signal])
        return None if instant is None else slot_local_date(instant // SLOT_US, tz)

    def _window(self, signal: str, today: date) -> tuple[Sequence[int], int]:
        """A counter signal's slots and the index of the first in its window."""
        code, first = _window_slots(signal, today, self._tz)
        by_code = self._slots
        if by_code is None:
            by_code = self._slots = {}
        slots = by_code.get(code)
        if slots is None:
            steps = None if self._steps is None else self._steps.get(code)
            if steps is None:
                return (), 0
            slots = by_code[code] = _unsteps(steps)
        return slots, bisect.bisect_left(slots, first)

    def count(self, signal: str, today: date) -> int:
        slots, start = self._window(signal, today)
        return len(slots) - start

    def counted_days(self, signal: str, today: date) -> list[date]:
        slots, start = self._window(signal, today)
        return _local_days(slots[start:], self._tz)


class NativeView(ContactView):
    """``ProfileView``'s answers, from a document the compiled reader read.

    The reader (``native/src/lib.rs``) decompresses and parses the document
    into Rust data and answers lookups by stored code; this class keeps the
    time-zone work (local dates by slot, windows' first slots) in Python,
    where ``ProfileView`` has it, so both share every cache and rule of it.
    """

    __slots__ = (
        "_attributes",
        "_dates",
        "_read",
        "_strings",
        "_tz",
        "contact_id",
        "tenant_id",
    )

    def __init__(
        self, tenant_id: str, contact_id: str, read: _NativeProfile, tz: ZoneInfo
    ) -> None:
        self.tenant_id = tenant_id
        self.contact_id = contact_id
        self._read = read
        self._tz = tz
        self._dates: _Dates | None = None
        self._strings: dict[str, str] | None = None
        self._attributes: dict[str, AttributeValue] | None = None

    @property
    def dates(self) -> Mapping[str, datetime]:
        dates = self._dates
        if dates is None:
            dates = self._dates = _Dates(self._read.dates())
        return dates

    @property
    def strings(self) -> Mapping[str, str]:
        strings = self._strings
        if strings is None:
            strings = {}
            for signal in _STRING_SOURCES:
                value = self.string(signal)
                if value is not None:
                    strings[signal] = value
            self._strings = strings
        return strings

    @property
    def attributes(self) -> Mapping[str, AttributeValue]:
        attributes = self._attributes
        if attributes is None:
            attributes = self._attributes = self._read.attributes()
        return attributes

    @property
    def counter_days(self) -> Mapping[Counter, Sequence[tuple[date, int]]]:
        return _CounterDays(self._read.counters(), self._tz)

    def attribute(self, name: str) -> AttributeValue | None:
        return self._read.attribute(name)

    def string(self, signal: str) -> str | None:
        code, item = _STRING_SOURCES[signal]
        value: Any = self._read.latest(code)
        if value is None or item is None:
            return cast(str | None, value)
        return cast(str, value[item])

    def local_date(self, signal: str, tz: ZoneInfo) -> date | None:
        instant = self._read.date_us(_DATE_CODES[signal])
        return None if instant is None else slot_local_date(instant // SLOT_US, tz)

    def count(self, signal: str, today: date) -> int:
        code, first = _window_slots(signal, today, self._tz)
        return self._read.count_from(code, first)

    def counted_days(self, signal: str, today: date) -> list[date]:
        code, first = _window_slots(signal, today, self._tz)
        return _local_days(self._read.slots_from(code, first), self._tz)


#: String signal -> the code of the "latest" value it reads, and the item of
#: that value it is (None: the value itself).
_STRING_SOURCES: Final[dict[str, tuple[str, int | None]]] = {
    "contact_source": (_SOURCE, None),
    "channel_type": (_CHANNEL, None),
    "last_template_used": (_TEMPLATE, 0),
    "last_template_type": (_TEMPLATE, 1),
    "last_ctwa_ad_source_url": (_CTWA_URL, None),
}


def _string(latest: Mapping[str, Sequence[Any]], signal: str) -> str | None:
    code, item = _STRING_SOURCES[signal]
    stamped = latest.get(code)
    if stamped is None:
        return None
    value: str = stamped[2] if item is None else stamped[2][item]
    return value


def _strings(latest: Mapping[str, Sequence[Any]]) -> dict[str, str]:
    """The string signals of a profile's "latest" values."""
    strings: dict[str, str] = {}
    for signal in _STRING_SOURCES:
        value = _string(latest, signal)
        if value is not None:
            strings[signal] = value
    return strings


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
            out[name] = view.string(name)
    return out
