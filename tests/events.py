"""Builders of contract-valid inbound events for tests."""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any

from tests.harness import rfc, unique

_ids = itertools.count(1)


class Events:
    """Events of one tenant; every event gets a fresh ``event_id``."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.run = unique("")

    def make(
        self, contact: str, kind: str, at: datetime, data: dict[str, Any], **extra: Any
    ) -> dict[str, Any]:
        event = {
            "event_id": f"{self.run}-{next(_ids)}",
            "tenant_id": self.tenant,
            "contact_id": contact,
            "type": kind,
            "occurred_at": rfc(at),
            "data": data,
        }
        event.update(extra)
        return event

    def updated(
        self,
        contact: str,
        at: datetime,
        attributes: dict[str, Any] | None = None,
        source: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if attributes is not None:
            data["attributes"] = attributes
        if source is not None:
            data["source"] = source
        return self.make(contact, "contact.updated", at, data, **extra)

    def inbound(
        self,
        contact: str,
        at: datetime,
        *,
        reply_campaign: str | None = None,
        reply: bool = False,
        ctwa: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        data: dict[str, Any] = {"message_id": unique("m")}
        if reply or reply_campaign:
            data["reply_to"] = {"message_id": "m-prev"}
            if reply_campaign:
                data["reply_to"]["campaign_id"] = reply_campaign
        if ctwa:
            data["ctwa"] = {"ad_source_url": ctwa}
        return self.make(contact, "message.inbound", at, data, **extra)

    def outbound(
        self,
        contact: str,
        at: datetime,
        template: tuple[str, str] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        data: dict[str, Any] = {"message_id": unique("m")}
        if template:
            data["template"] = {"name": template[0], "type": template[1]}
        return self.make(contact, "message.outbound", at, data, **extra)

    def campaign(
        self,
        contact: str,
        at: datetime,
        campaign: str = "c1",
        template: tuple[str, str] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        data: dict[str, Any] = {"campaign_id": campaign, "message_id": unique("m")}
        if template:
            data["template"] = {"name": template[0], "type": template[1]}
        return self.make(contact, "campaign.received", at, data, **extra)

    def read(
        self, contact: str, at: datetime, campaign: str | None = None, **extra: Any
    ) -> dict[str, Any]:
        data: dict[str, Any] = {"message_id": unique("m")}
        if campaign:
            data["campaign_id"] = campaign
        return self.make(contact, "message.read", at, data, **extra)

    def click(self, contact: str, at: datetime, **extra: Any) -> dict[str, Any]:
        return self.make(
            contact, "link.clicked", at, {"url": "https://x.test/a"}, **extra
        )

    def call(
        self,
        contact: str,
        at: datetime,
        direction: str = "inbound",
        answered: bool = True,
        **extra: Any,
    ) -> dict[str, Any]:
        return self.make(
            contact, "call", at, {"direction": direction, "answered": answered}, **extra
        )
