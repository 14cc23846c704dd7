"""Inbound validation (contract section 1) and the committed JSON Schemas."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from schemas.events import parse_event
from schemas.generate import HERE, SCHEMAS, render
from signals.errors import InvalidEventError

VALID: dict[str, Any] = {
    "event_id": "e1",
    "tenant_id": "acme_1",
    "contact_id": "+1 555 0100",
    "type": "link.clicked",
    "occurred_at": "2026-12-01T10:15:00+05:30",
    "channel": "whatsapp",
    "data": {"url": "https://x.test", "campaign_id": "c"},
}


def with_(**changes: Any) -> bytes:
    body = {**VALID, **changes}
    return orjson.dumps({k: v for k, v in body.items() if v is not ...})


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b"{not json", "bad_json"),
        (b"[1, 2]", "schema"),
        (with_(type="link.hovered"), "unknown_type"),
        (with_(type=...), "missing_field"),
        (with_(extra=1), "unknown_field"),
        (with_(data={"url": "u", "colour": "red"}), "unknown_field"),
        (with_(occurred_at="2026-12-01T10:15:00"), "naive_time"),
        (with_(occurred_at="2026-12-01 10:15"), "naive_time"),
        (with_(occurred_at=1764584100), "schema"),
        (with_(tenant_id="bad tenant"), "schema"),
        (with_(tenant_id="x" * 65), "schema"),
        (with_(contact_id="tab\there"), "schema"),
        (with_(contact_id=""), "schema"),
        (with_(event_id="e" * 129), "schema"),
        (with_(contact_id=...), "missing_field"),
        (
            with_(type="call", data={"direction": "sideways", "answered": True}),
            "schema",
        ),
        (with_(type="call", data={"direction": "inbound", "answered": 1}), "schema"),
        (with_(type="contact.updated", data={"attributes": {"a": [1]}}), "schema"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_invalid_records_are_refused_with_a_kind(raw: bytes, kind: str) -> None:
    with pytest.raises(InvalidEventError) as info:
        parse_event(raw)
    assert info.value.kind == kind
    assert info.value.reason


def test_a_valid_record_parses_with_its_offset() -> None:
    event = parse_event(with_())
    assert event.occurred_at.utcoffset() is not None
    assert event.occurred_at.isoformat() == "2026-12-01T10:15:00+05:30"


def test_attributes_take_any_keys_and_scalars() -> None:
    event = parse_event(
        with_(
            type="contact.updated",
            data={
                "attributes": {"Any Key!": "x", "n": 1.5, "b": False, "gone": None},
                "source": "crm",
            },
        )
    )
    assert event.data.attributes["gone"] is None  # type: ignore[union-attr]


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_committed_json_schemas_are_current(name: str) -> None:
    committed = (HERE / name).read_bytes()
    assert committed == render(SCHEMAS[name]()), (
        f"schemas/{name} is stale: run `profilestream schemas` and commit"
    )
