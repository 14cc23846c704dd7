"""The membership change record of contract section 4, as a pydantic model.

The worker builds these records as plain dicts on its hot path
(``segments.membership.Change.payload``); this model documents the format,
generates its JSON Schema, and lets subscribers written in Python validate
what they read.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class MembershipChange(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    event_id: str = Field(description="Deterministic: the same on re-emission.")
    tenant_id: str
    segment_id: str
    segment_version: int = Field(ge=1)
    contact_id: str
    change: Literal["entered", "exited"]
    reason: Literal["event", "clock", "definition", "snapshot"]
    at: str = Field(description="RFC 3339 UTC instant the answer changed.")
    caused_by: str | None = Field(
        description="The event_id behind a change with reason `event`, else null."
    )


def membership_json_schema() -> dict[str, Any]:
    schema = MembershipChange.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Segment membership change (profilestream contract v1)"
    return schema
