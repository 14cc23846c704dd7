"""Inbound engagement events (contract section 1) as strict pydantic models.

Every model forbids unknown fields at every level, except the keys of
``contact.updated``'s ``attributes``. Times must be RFC 3339 with an offset;
a naive time is invalid. ``parse_event`` is the one entry point the worker
uses: it returns a typed event or raises ``InvalidEventError`` with a readable
reason and a short machine-readable ``kind`` for dead-letter headers and
metrics.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)

from signals.errors import InvalidEventError

_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)


def parse_rfc3339(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 string")
    if not _RFC3339.match(value):
        raise ValueError(
            "must be RFC 3339 with an offset, e.g. 2026-12-01T10:15:00Z "
            "(naive times are invalid)"
        )
    if "t" not in value and "z" not in value:
        # The common spelling: ``fromisoformat`` takes "Z" and truncates
        # fractions past microseconds itself (Python 3.11+).
        return datetime.fromisoformat(value)
    text = value.upper().replace("Z", "+00:00")
    if "." in text:
        # Python parses at most microseconds; extra digits carry no meaning here.
        head, _, rest = text.partition(".")
        digits = rest[: len(rest) - 6]
        text = f"{head}.{digits[:6].ljust(6, '0')}{rest[-6:]}"
    return datetime.fromisoformat(text)


Timestamp = Annotated[datetime, BeforeValidator(parse_rfc3339)]
EventId = Annotated[str, StringConstraints(min_length=1, max_length=128)]
TenantId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


def _printable(value: Any) -> Any:
    if isinstance(value, str) and not value.isprintable():
        raise ValueError("must contain printable characters only")
    return value


ContactId = Annotated[
    str,
    BeforeValidator(_printable),
    StringConstraints(min_length=1, max_length=128),
]
Text = Annotated[str, StringConstraints(min_length=1, max_length=2048)]
AttributeScalar = str | int | float | bool | None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Template(_Strict):
    name: Text
    type: Text


class ReplyTo(_Strict):
    message_id: Text | None = None
    campaign_id: Text | None = None


class Ctwa(_Strict):
    ad_source_url: Text


class ContactUpdatedData(_Strict):
    attributes: dict[
        Annotated[str, StringConstraints(min_length=1, max_length=128)],
        AttributeScalar,
    ] = Field(default_factory=dict, max_length=256)
    source: Text | None = None


class MessageInboundData(_Strict):
    message_id: Text
    reply_to: ReplyTo | None = None
    ctwa: Ctwa | None = None


class MessageOutboundData(_Strict):
    message_id: Text
    template: Template | None = None


class CampaignReceivedData(_Strict):
    campaign_id: Text
    message_id: Text
    template: Template | None = None


class MessageReadData(_Strict):
    message_id: Text
    campaign_id: Text | None = None


class LinkClickedData(_Strict):
    url: Text
    message_id: Text | None = None
    campaign_id: Text | None = None


class CallData(_Strict):
    direction: Literal["inbound", "outbound"]
    answered: bool
    duration_seconds: Annotated[float, Field(ge=0)] | None = None


class _Envelope(_Strict):
    event_id: EventId
    tenant_id: TenantId
    contact_id: ContactId
    occurred_at: Timestamp
    channel: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = (
        None
    )


class ContactUpdated(_Envelope):
    type: Literal["contact.updated"]
    data: ContactUpdatedData


class MessageInbound(_Envelope):
    type: Literal["message.inbound"]
    data: MessageInboundData


class MessageOutbound(_Envelope):
    type: Literal["message.outbound"]
    data: MessageOutboundData


class CampaignReceived(_Envelope):
    type: Literal["campaign.received"]
    data: CampaignReceivedData


class MessageRead(_Envelope):
    type: Literal["message.read"]
    data: MessageReadData


class LinkClicked(_Envelope):
    type: Literal["link.clicked"]
    data: LinkClickedData


class Call(_Envelope):
    type: Literal["call"]
    data: CallData


Event = Annotated[
    ContactUpdated
    | MessageInbound
    | MessageOutbound
    | CampaignReceived
    | MessageRead
    | LinkClicked
    | Call,
    Field(discriminator="type"),
]

EVENT_MODELS: tuple[type[_Envelope], ...] = (
    ContactUpdated,
    MessageInbound,
    MessageOutbound,
    CampaignReceived,
    MessageRead,
    LinkClicked,
    Call,
)
EVENT_TYPES = frozenset(
    model.model_fields["type"].annotation.__args__[0]  # type: ignore[union-attr]
    for model in EVENT_MODELS
)

_adapter: TypeAdapter[Event] = TypeAdapter(Event)


def _reason(exc: ValidationError) -> tuple[str, str]:
    """A readable reason and a short kind from pydantic's first errors."""
    parts = []
    kind = "schema"
    for error in exc.errors(include_url=False)[:3]:
        # The first location item is the discriminator's value; drop it.
        where = ".".join(str(p) for p in error["loc"][1:]) or "record"
        if error["type"] == "union_tag_not_found":
            kind = "missing_field"
            parts.append("type: field required")
            continue
        if error["type"] == "union_tag_invalid":
            kind = "unknown_type"
            parts.append(f"type: unknown event type {error['input'].get('type')!r}")
            continue
        if error["type"] == "extra_forbidden":
            kind = "unknown_field"
        elif error["type"] == "missing":
            kind = "missing_field"
        elif "naive" in error["msg"] or "offset" in error["msg"]:
            kind = "naive_time"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts), kind


def parse_event(raw: bytes) -> Event:
    """Decode and validate one record value, or raise ``InvalidEventError``."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEventError(f"not valid JSON: {exc}", "bad_json") from exc
    if not isinstance(document, dict):
        raise InvalidEventError("a record must be a JSON object", "schema")
    try:
        return _adapter.validate_python(document)
    except ValidationError as exc:
        reason, kind = _reason(exc)
        raise InvalidEventError(reason, kind) from exc


def event_json_schema() -> dict[str, Any]:
    """The JSON Schema of one inbound record, for publishers in any language."""
    schema = _adapter.json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Engagement event (profilestream contract v1)"
    return schema
