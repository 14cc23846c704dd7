"""A long backfill shows its progress on the segment list while it runs."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from tests.events import Events
from tests.harness import WorkerProcess

RULE = {
    "any": [{"all": [{"field": "signal.links_clicked_7d", "op": "gte", "value": 1}]}]
}


async def test_backfill_progress_is_visible_then_cleared(
    worker: WorkerProcess, events: Events, tenant: str
) -> None:
    now = await worker.now()
    contacts = 3000  # more than one chunk of the walk (2,000)
    await worker.publish(
        [events.click(f"p{i}", now - timedelta(minutes=5)) for i in range(contacts)]
    )
    await worker.settle(wait_seconds=120)
    base = f"/v1/tenants/{tenant}/segments"
    create = asyncio.ensure_future(
        worker.request("POST", base, {"name": "big", "kind": "active", "rule": RULE})
    )
    seen: list[dict[str, Any]] = []
    while not create.done():
        status, listing = await worker.get(base)
        assert status == 200
        seen += [s["progress"] for s in listing["segments"] if s["progress"]]
        await asyncio.sleep(0.02)
    status, created = await create
    assert status == 201, created
    assert created["backfill"]["contacts"] == contacts
    assert seen, "no progress was visible while the backfill ran"
    assert all(0 < p["done"] <= p["total"] == contacts for p in seen)
    status, listing = await worker.get(base)
    assert [s["progress"] for s in listing["segments"]] == [None]
