"""Prometheus metrics move as events flow."""

from __future__ import annotations

import re
from datetime import timedelta

from tests.events import Events
from tests.harness import WorkerProcess


def value(text: str, name: str, **labels: str) -> float:
    """One sample's value from the exposition text (0 when absent)."""
    selector = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(name) + (r"\{" + re.escape(selector) + r"\}" if labels else "")
    match = re.search(rf"^{pattern} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def scrape(worker: WorkerProcess) -> str:
    status, body = await worker.request("GET", "/metrics", token=None)
    assert status == 200
    assert isinstance(body, bytes)
    return body.decode()


async def test_counters_follow_the_events(
    worker: WorkerProcess, events: Events, tenant: str
) -> None:
    now = await worker.now()
    before = await scrape(worker)
    click = events.click("m1", now - timedelta(minutes=3))
    await worker.request(
        "POST",
        f"/v1/tenants/{tenant}/segments",
        {
            "name": "clicked",
            "kind": "active",
            "rule": {
                "any": [
                    {
                        "all": [
                            {
                                "field": "signal.links_clicked_7d",
                                "op": "gte",
                                "value": 1,
                            }
                        ]
                    }
                ]
            },
        },
    )
    await worker.publish(
        [click, click, events.campaign("m1", now - timedelta(minutes=2))]
    )
    await worker.publish_raw("engagement.clicks", b"{broken", b"x:y")
    await worker.settle()
    after = await scrape(worker)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    applied = "profilestream_events_applied_total"
    assert delta(applied, tenant=tenant, type="link.clicked") == 1
    assert delta(applied, tenant=tenant, type="campaign.received") == 1
    assert delta("profilestream_duplicates_suppressed_total") >= 1
    assert delta("profilestream_dead_letters_total", kind="bad_json") == 1
    assert delta("profilestream_membership_changes_total", reason="event") >= 1
    assert delta("profilestream_batch_seconds_count") >= 1
    assert delta("profilestream_redis_call_seconds_count", step="load") >= 1
    assert "profilestream_consumer_lag{" in after
    assert value(after, "profilestream_clock_changes_pending") == 0
