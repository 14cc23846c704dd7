"""The segments every fault run creates in each tenant.

A few operators only (those ``tests.reference`` evaluates), chosen so that
answers move with events (counters, attributes, strings) and with the clock
at local midnight (``in_last``, ``not_in_last``, the 7- and 30-day counters).
"""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]


def cond(field: str, op: str, value: Any = None) -> Json:
    condition: Json = {"field": field, "op": op}
    if value is not None:
        condition["value"] = value
    return condition


def any_of(*groups: list[Json]) -> Json:
    return {"any": [{"all": group} for group in groups]}


RULES: dict[str, Json] = {
    "clicked-7d": any_of([cond("signal.links_clicked_7d", "gte", 1)]),
    "quiet-3d": any_of([cond("signal.last_message_from_contact", "not_in_last", 3)]),
    "pune": any_of([cond("attribute.city", "is", "PUNE")]),
    "engaged": any_of(
        [
            cond("signal.campaigns_received_30d", "between", [1, 3]),
            cond("signal.channel_type", "in", ["whatsapp", "sms"]),
        ],
        [
            cond("signal.last_link_clicked", "in_last", 2),
            cond("signal.contact_source", "is_not", "api"),
        ],
    ),
    "callers": any_of(
        [cond("signal.last_answered_inbound_call", "in_last", 30)],
        [
            cond("signal.campaigns_read_7d", "gte", 1),
            cond("signal.last_template_type", "is", "marketing"),
        ],
    ),
}
