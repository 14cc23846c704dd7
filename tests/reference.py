"""An independent reference model of signals and segment membership.

Written from ``/work/shared/contract.md`` (sections 2 and 3) alone, without
importing ``signals`` or ``segments``: given the accepted events of one contact
(contract JSON form), the clock instant and the tenant's time zone, compute the
32 signals, the attributes, and whether a rule holds. Fault tests compare what
the worker serves and publishes with this model.

Where the contract is silent, the decisions of ``docs/design.md`` are followed
and marked here: ``contact_source`` is the ``source`` of the latest
``contact.updated`` that carries one.

Deduplication (``dedup``) keeps the first event per ``(tenant_id, event_id)``;
the contract makes that the deduplication key (within a 24 h horizon, which the
fault runs stay inside).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

Json = dict[str, Any]
Value = str | int | datetime | None

DATE_SIGNALS = (
    "contact_last_updated",
    "first_conversation_at",
    "last_message_from_contact",
    "last_message_read_by_contact",
    "last_reply_from_contact",
    "last_link_clicked",
    "last_message_from_business",
    "last_campaign_received",
    "last_inbound_call",
    "last_outbound_call",
    "last_answered_inbound_call",
    "last_answered_outbound_call",
    "last_template_sent_at",
    "last_ctwa_message_at",
    "first_business_reply_to_last_ctwa",
)
STRING_SIGNALS = (
    "contact_source",
    "channel_type",
    "last_template_used",
    "last_template_type",
    "last_ctwa_ad_source_url",
)
COUNTERS = (
    "campaigns_received",
    "campaigns_read",
    "campaigns_replied",
    "links_clicked",
)
WINDOWS = (7, 30, 90)
COUNT_SIGNALS = tuple(f"{c}_{n}d" for c in COUNTERS for n in WINDOWS)
ALL_SIGNALS = DATE_SIGNALS + STRING_SIGNALS + COUNT_SIGNALS
assert len(ALL_SIGNALS) == 32

BUSINESS = ("message.outbound", "campaign.received")
CONVERSATION = ("message.inbound", "message.outbound", "campaign.received")


def parse_instant(text: str) -> datetime:
    """An RFC 3339 string with an offset, as an aware UTC datetime."""
    instant = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if instant.tzinfo is None:
        raise ValueError(f"naive time {text!r}")
    return instant.astimezone(UTC)


def dedup(events: Iterable[Json]) -> list[Json]:
    """The first event of each ``(tenant_id, event_id)``, in the given order."""
    seen: set[tuple[str, str]] = set()
    out = []
    for event in events:
        key = (event["tenant_id"], event["event_id"])
        if key not in seen:
            seen.add(key)
            out.append(event)
    return out


def _order(event: Json) -> tuple[datetime, str]:
    """What "latest" compares: ``occurred_at``, then ``event_id`` (code points)."""
    return parse_instant(event["occurred_at"]), event["event_id"]


def _latest(events: Iterable[Json]) -> Json | None:
    return max(events, key=_order, default=None)


def _max_at(events: Iterable[Json]) -> datetime | None:
    return max((parse_instant(e["occurred_at"]) for e in events), default=None)


def _min_at(events: Iterable[Json]) -> datetime | None:
    return min((parse_instant(e["occurred_at"]) for e in events), default=None)


def local_date(instant: datetime, tz: ZoneInfo) -> date:
    return instant.astimezone(tz).date()


def in_window(instant: datetime, days: int, now: datetime, tz: ZoneInfo) -> bool:
    """Inside "the last N days": local date >= today - (N - 1)."""
    return local_date(instant, tz) >= local_date(now, tz) - timedelta(days=days - 1)


def signals(events: Sequence[Json], now: datetime, tz: ZoneInfo) -> dict[str, Value]:
    """All 32 signals of one contact from its accepted (deduplicated) events."""
    by_type: dict[str, list[Json]] = {}
    for event in events:
        by_type.setdefault(event["type"], []).append(event)

    def of(*types: str) -> list[Json]:
        return [e for t in types for e in by_type.get(t, [])]

    updates = of("contact.updated")
    inbound = of("message.inbound")
    business = of(*BUSINESS)
    calls = of("call")
    replies = [e for e in inbound if "reply_to" in e["data"]]
    ctwa = [e for e in inbound if "ctwa" in e["data"]]
    templated = [e for e in business if "template" in e["data"]]
    sourced = [e for e in updates if "source" in e["data"]]  # docs/design.md
    channelled = [e for e in events if "channel" in e]

    def call_at(direction: str, answered: bool | None) -> datetime | None:
        return _max_at(
            e
            for e in calls
            if e["data"]["direction"] == direction
            and (answered is None or e["data"]["answered"] is answered)
        )

    out: dict[str, Value] = {
        "contact_last_updated": _max_at(updates),
        "first_conversation_at": _min_at(of(*CONVERSATION)),
        "last_message_from_contact": _max_at(inbound),
        "last_message_read_by_contact": _max_at(of("message.read")),
        "last_reply_from_contact": _max_at(replies),
        "last_link_clicked": _max_at(of("link.clicked")),
        "last_message_from_business": _max_at(business),
        "last_campaign_received": _max_at(of("campaign.received")),
        "last_inbound_call": call_at("inbound", None),
        "last_outbound_call": call_at("outbound", None),
        "last_answered_inbound_call": call_at("inbound", True),
        "last_answered_outbound_call": call_at("outbound", True),
        "last_template_sent_at": _max_at(templated),
        "last_ctwa_message_at": _max_at(ctwa),
    }
    last_ctwa = out["last_ctwa_message_at"]
    out["first_business_reply_to_last_ctwa"] = (
        None
        if not isinstance(last_ctwa, datetime)
        else _min_at(
            e for e in business if parse_instant(e["occurred_at"]) >= last_ctwa
        )
    )

    source = _latest(sourced)
    out["contact_source"] = None if source is None else source["data"]["source"]
    channel = _latest(channelled)
    out["channel_type"] = None if channel is None else channel["channel"]
    template = _latest(templated)
    out["last_template_used"] = (
        None if template is None else template["data"]["template"]["name"]
    )
    out["last_template_type"] = (
        None if template is None else template["data"]["template"]["type"]
    )
    ad = _latest(ctwa)
    out["last_ctwa_ad_source_url"] = (
        None if ad is None else ad["data"]["ctwa"]["ad_source_url"]
    )

    counted: dict[str, list[Json]] = {
        "campaigns_received": of("campaign.received"),
        "campaigns_read": [e for e in of("message.read") if "campaign_id" in e["data"]],
        "campaigns_replied": [
            e for e in replies if "campaign_id" in e["data"]["reply_to"]
        ],
        "links_clicked": of("link.clicked"),
    }
    for counter, members in counted.items():
        for days in WINDOWS:
            out[f"{counter}_{days}d"] = sum(
                in_window(parse_instant(e["occurred_at"]), days, now, tz)
                for e in members
            )
    assert set(out) == set(ALL_SIGNALS)
    return out


def attributes(events: Sequence[Json]) -> dict[str, Any]:
    """``contact.updated`` attributes merged per attribute, latest wins."""
    latest: dict[str, tuple[tuple[datetime, str], Any]] = {}
    for event in events:
        if event["type"] != "contact.updated":
            continue
        order = _order(event)
        for name, value in event["data"].get("attributes", {}).items():
            if name not in latest or order > latest[name][0]:
                latest[name] = (order, value)
    return {name: value for name, (_, value) in latest.items() if value is not None}


def signals_json(values: Mapping[str, Value]) -> dict[str, str | int | None]:
    """Signals with dates as RFC 3339 UTC strings (``...T10:15:00Z``)."""
    out: dict[str, str | int | None] = {}
    for name, value in values.items():
        if isinstance(value, datetime):
            out[name] = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        else:
            out[name] = value
    return out


def same_signals(served: Mapping[str, Any], expected: Mapping[str, Value]) -> list[str]:
    """Differences between the API's ``signals`` and the model's, one per line."""
    diffs = []
    if set(served) != set(expected):
        diffs.append(f"signal names differ: {sorted(set(served) ^ set(expected))}")
    for name in ALL_SIGNALS:
        want = expected.get(name)
        got = served.get(name)
        if isinstance(want, datetime):
            ok = isinstance(got, str) and parse_instant(got) == want
        else:
            ok = got == want and type(got) is type(want)
        if not ok:
            diffs.append(
                f"{name}: served {got!r}, expected {signals_json({name: want})}"
            )
    return diffs


# --- rules -----------------------------------------------------------------------


def _date_of(raw: Any, tz: ZoneInfo) -> date | None:
    """A signal instant, or an attribute's ISO 8601 date string, as a local date."""
    if isinstance(raw, datetime):
        return local_date(raw, tz)
    if not isinstance(raw, str):
        return None
    try:
        if len(raw) == 10:
            return date.fromisoformat(raw)
        return local_date(parse_instant(raw), tz)
    except ValueError:
        return None


_DATE_OPS = {"in_last", "not_in_last", "before", "after", "on"}
_COUNT_OPS = {"eq", "ne", "gt", "gte", "lt", "lte", "between"}
_STRING_OPS = {
    "is",
    "is_not",
    "in",
    "not_in",
    "contains",
    "not_contains",
    "starts_with",
}


def _date_holds(op: str, value: Any, day: date, today: date) -> bool:
    if op == "in_last":
        return day >= today - timedelta(days=value - 1)
    if op == "not_in_last":
        return day < today - timedelta(days=value - 1)
    bound = date.fromisoformat(value)
    return {"before": day < bound, "after": day > bound, "on": day == bound}[op]


def _count_holds(op: str, value: Any, n: int | float) -> bool:
    if op == "between":
        return bool(value[0] <= n <= value[1])
    return bool(
        {
            "eq": n == value,
            "ne": n != value,
            "gt": n > value,
            "gte": n >= value,
            "lt": n < value,
            "lte": n <= value,
        }[op]
    )


def _string_holds(op: str, value: Any, s: str | None) -> bool:
    """Case-insensitive; ``is_not``, ``not_in``, ``not_contains`` hold on unset."""
    if op in ("in", "not_in"):
        inside = s is not None and s in {v.casefold() for v in value}
        return inside if op == "in" else not inside
    operand = str(value).casefold()
    if op == "is":
        return s == operand
    if op == "is_not":
        return s != operand
    if op == "contains":
        return s is not None and operand in s
    if op == "not_contains":
        return s is None or operand not in s
    return s is not None and s.startswith(operand)  # starts_with


def condition_holds(
    condition: Json,
    values: Mapping[str, Value],
    attrs: Mapping[str, Any],
    now: datetime,
    tz: ZoneInfo,
) -> bool:
    """One condition (contract section 3), for the operators listed above."""
    kind, _, name = condition["field"].partition(".")
    op, value = condition["op"], condition.get("value")
    raw = values.get(name) if kind == "signal" else attrs.get(name)
    if op == "is_set":
        return raw is not None
    if op == "is_not_set":
        return raw is None
    if op in _DATE_OPS:
        day = _date_of(raw, tz)
        return day is not None and _date_holds(op, value, day, local_date(now, tz))
    if op in _COUNT_OPS:
        if not isinstance(raw, int | float) or isinstance(raw, bool):
            return False  # unset, or another type: a mismatch is false
        return _count_holds(op, value, raw)
    if op in _STRING_OPS:
        if raw is not None and not isinstance(raw, str):
            return False  # another type: a mismatch is false
        return _string_holds(op, value, None if raw is None else raw.casefold())
    raise NotImplementedError(f"the reference model has no operator {op!r}")


def rule_holds(
    rule: Json,
    values: Mapping[str, Value],
    attrs: Mapping[str, Any],
    now: datetime,
    tz: ZoneInfo,
) -> bool:
    """``any`` of groups, each ``all`` of conditions."""
    return any(
        all(condition_holds(c, values, attrs, now, tz) for c in group["all"])
        for group in rule["any"]
    )


class Contact:
    """One contact's accepted events and what the model says about it."""

    def __init__(self, tenant_id: str, contact_id: str) -> None:
        self.tenant_id = tenant_id
        self.contact_id = contact_id
        self.events: list[Json] = []

    def signals(self, now: datetime, tz: ZoneInfo) -> dict[str, Value]:
        return signals(self.events, now, tz)

    def attributes(self) -> dict[str, Any]:
        return attributes(self.events)

    def segments(
        self, rules: Mapping[str, Json], now: datetime, tz: ZoneInfo
    ) -> set[str]:
        """Ids of the segments (id -> rule) whose rule holds for this contact."""
        values = self.signals(now, tz)
        attrs = self.attributes()
        return {
            sid
            for sid, rule in rules.items()
            if rule_holds(rule, values, attrs, now, tz)
        }


def contacts_of(events: Iterable[Json]) -> dict[tuple[str, str], Contact]:
    """Accepted events (deduplicated here) grouped by ``(tenant, contact)``."""
    out: dict[tuple[str, str], Contact] = {}
    for event in dedup(events):
        key = (event["tenant_id"], event["contact_id"])
        if key not in out:
            out[key] = Contact(*key)
        out[key].events.append(event)
    return out
