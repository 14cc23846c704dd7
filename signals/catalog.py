"""The 32 profile signals of contract section 2: names, types and windows.

This module is the single list every other part reads: the fold that keeps the
signals, the HTTP read-out, the rule validator and the JSON schemas. Adding a
signal starts here.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class SignalType(StrEnum):
    """The value type of a signal, which decides the operators a rule may use."""

    DATE = "date"
    COUNT = "count"
    STRING = "string"


class Counter(StrEnum):
    """The four event kinds counted over rolling local-calendar-day windows."""

    CAMPAIGNS_RECEIVED = "campaigns_received"
    CAMPAIGNS_READ = "campaigns_read"
    CAMPAIGNS_REPLIED = "campaigns_replied"
    LINKS_CLICKED = "links_clicked"


#: Window lengths in days of every counter, and the longest one kept.
WINDOWS: Final = (7, 30, 90)
LONGEST_WINDOW: Final = max(WINDOWS)

DATE_SIGNALS: Final = (
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

STRING_SIGNALS: Final = (
    "contact_source",
    "channel_type",
    "last_template_used",
    "last_template_type",
    "last_ctwa_ad_source_url",
)

#: ``links_clicked_7d`` -> (Counter.LINKS_CLICKED, 7), for every counter signal.
COUNT_SIGNALS: Final = {
    f"{counter.value}_{days}d": (counter, days)
    for counter in Counter
    for days in WINDOWS
}

SIGNAL_TYPES: Final[dict[str, SignalType]] = {
    **{name: SignalType.DATE for name in DATE_SIGNALS},
    **{name: SignalType.STRING for name in STRING_SIGNALS},
    **{name: SignalType.COUNT for name in COUNT_SIGNALS},
}

#: Every signal name in the order the HTTP API lists them.
SIGNAL_NAMES: Final = tuple(SIGNAL_TYPES)

assert len(SIGNAL_NAMES) == 32, "contract section 2 defines exactly 32 signals"
