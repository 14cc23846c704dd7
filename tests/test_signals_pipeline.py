"""Signals through a real worker, Kafka and Redis (contract sections 1, 2, 5, 6)."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import orjson

from tests.events import Events
from tests.harness import WorkerProcess, rfc, unique

DAY = timedelta(days=1)


def z(instant: datetime) -> str:
    return rfc(instant)


async def test_every_signal_from_its_events(
    worker: WorkerProcess, events: Events, tenant: str
) -> None:
    now = await worker.now()
    c = "+15550001"
    t = [now - timedelta(hours=h) for h in range(100, 0, -1)]  # t[0] oldest
    await worker.publish(
        [
            events.updated(
                c,
                t[0],
                {"city": "Pune", "vip": True, "score": 7},
                source="import",
                channel="sms",
            ),
            events.inbound(c, t[1], ctwa="https://ad.test/1", channel="whatsapp"),
            events.outbound(c, t[2], template=("welcome", "utility")),
            events.campaign(c, t[3], "camp-1", template=("promo", "marketing")),
            events.read(c, t[4], campaign="camp-1"),
            events.read(c, t[5]),
            events.click(c, t[6]),
            events.inbound(c, t[7], reply_campaign="camp-1"),
            events.call(c, t[8], "inbound", answered=True),
            events.call(c, t[9], "inbound", answered=False),
            events.call(c, t[10], "outbound", answered=True),
            events.call(c, t[11], "outbound", answered=False),
            events.updated(c, t[12], {"city": None, "tier": "gold"}),
            events.outbound(c, t[13]),
        ]
    )
    await worker.settle()
    body = await worker.contact(tenant, c)
    assert body["tenant_id"] == tenant and body["contact_id"] == c
    assert body["signals"] == {
        "contact_last_updated": z(t[12]),
        "first_conversation_at": z(t[1]),
        "last_message_from_contact": z(t[7]),
        "last_message_read_by_contact": z(t[5]),
        "last_reply_from_contact": z(t[7]),
        "last_link_clicked": z(t[6]),
        "last_message_from_business": z(t[13]),
        "last_campaign_received": z(t[3]),
        "last_inbound_call": z(t[9]),
        "last_outbound_call": z(t[11]),
        "last_answered_inbound_call": z(t[8]),
        "last_answered_outbound_call": z(t[10]),
        "last_template_sent_at": z(t[3]),
        "last_ctwa_message_at": z(t[1]),
        "first_business_reply_to_last_ctwa": z(t[2]),
        "contact_source": "import",
        "channel_type": "whatsapp",
        "last_template_used": "promo",
        "last_template_type": "marketing",
        "last_ctwa_ad_source_url": "https://ad.test/1",
        "campaigns_received_7d": 1,
        "campaigns_received_30d": 1,
        "campaigns_received_90d": 1,
        "campaigns_read_7d": 1,
        "campaigns_read_30d": 1,
        "campaigns_read_90d": 1,
        "campaigns_replied_7d": 1,
        "campaigns_replied_30d": 1,
        "campaigns_replied_90d": 1,
        "links_clicked_7d": 1,
        "links_clicked_30d": 1,
        "links_clicked_90d": 1,
    }
    assert len(body["signals"]) == 32
    assert body["attributes"] == {"vip": True, "score": 7, "tier": "gold"}
    assert body["segments"] == []


async def test_a_later_ctwa_resets_the_first_business_reply(
    worker: WorkerProcess, events: Events, tenant: str
) -> None:
    now = await worker.now()
    c = "ctwa"
    first = now - timedelta(hours=10)
    await worker.publish(
        [
            events.inbound(c, first, ctwa="https://ad.test/old"),
            events.outbound(c, first + timedelta(hours=1)),
            events.outbound(c, first + timedelta(hours=5)),
            # Arrives last, but happened between the two replies.
            events.inbound(c, first + timedelta(hours=3), ctwa="https://ad.test/new"),
        ]
    )
    await worker.settle()
    signals = (await worker.contact(tenant, c))["signals"]
    assert signals["last_ctwa_message_at"] == z(first + timedelta(hours=3))
    assert signals["last_ctwa_ad_source_url"] == "https://ad.test/new"
    assert signals["first_business_reply_to_last_ctwa"] == z(first + timedelta(hours=5))

    await worker.publish([events.inbound(c, first + timedelta(hours=6), ctwa="u")])
    await worker.settle()
    signals = (await worker.contact(tenant, c))["signals"]
    assert signals["first_business_reply_to_last_ctwa"] is None


async def test_arrival_order_does_not_matter(
    worker: WorkerProcess, events: Events, tenant: str
) -> None:
    now = await worker.now()
    rng = random.Random(7)
    history = []
    for i in range(40):
        at = now - timedelta(minutes=rng.randrange(1, 60 * 24 * 20))
        kind = rng.choice(["in", "out", "camp", "read", "click", "call", "upd"])
        history.append((kind, at, i))
    # Ties on occurred_at resolve by event_id, whatever the order.
    history.append(("upd", history[-1][1], 99))

    def one(contact: str, kind: str, at: datetime, i: int) -> dict[str, object]:
        match kind:
            case "in":
                return events.inbound(
                    contact, at, reply_campaign=f"c{i % 3}", channel=f"ch{i}"
                )
            case "out":
                return events.outbound(contact, at, template=(f"t{i}", "utility"))
            case "camp":
                return events.campaign(contact, at, f"c{i}")
            case "read":
                return events.read(contact, at, campaign="c")
            case "click":
                return events.click(contact, at)
            case "call":
                return events.call(contact, at, "inbound", i % 2 == 0)
            case _:
                return events.updated(
                    contact, at, {"a": i, f"k{i % 4}": i}, source=f"s{i}"
                )

    def build(contact: str) -> list[dict[str, object]]:
        out = []
        for kind, at, i in history:
            e = one(contact, kind, at, i)
            e["event_id"] = f"{contact}-{i:03d}"
            out.append(e)
        return out

    in_order = build("ordered")
    shuffled = build("shuffled")
    rng.shuffle(shuffled)
    await worker.publish(in_order)
    await worker.publish(list(reversed(shuffled)))
    await worker.settle()
    a = await worker.contact(tenant, "ordered")
    b = await worker.contact(tenant, "shuffled")
    assert a["signals"] == b["signals"]
    assert a["attributes"] == b["attributes"]
    assert a["signals"]["links_clicked_90d"] == sum(
        1 for k, *_ in history if k == "click"
    )


async def test_a_replayed_event_changes_nothing(
    worker: WorkerProcess, events: Events, tenant: str
) -> None:
    now = await worker.now()
    click = events.click("dup", now - timedelta(hours=1))
    camp = events.campaign("dup", now - timedelta(hours=2))
    await worker.publish([click, camp, click])
    await worker.settle()
    await worker.publish([click, camp])  # a later batch, as after a crash
    await worker.settle()
    signals = (await worker.contact(tenant, "dup"))["signals"]
    assert signals["links_clicked_7d"] == 1
    assert signals["campaigns_received_90d"] == 1


async def test_tenants_are_apart(worker: WorkerProcess) -> None:
    now = await worker.now()
    t1, t2 = unique("tn"), unique("tn")
    e1, e2 = Events(t1), Events(t2)
    a = e1.click("same", now - timedelta(hours=1))
    b = e2.click("same", now - timedelta(hours=2))
    b["event_id"] = a["event_id"]  # the same event id in both tenants
    await worker.publish([a, b, e2.click("same", now - timedelta(hours=3))])
    await worker.settle()
    s1 = (await worker.contact(t1, "same"))["signals"]
    s2 = (await worker.contact(t2, "same"))["signals"]
    assert (s1["links_clicked_7d"], s2["links_clicked_7d"]) == (1, 2)
    assert s1["last_link_clicked"] == z(now - timedelta(hours=1))
    assert s2["last_link_clicked"] == z(now - timedelta(hours=2))


async def test_invalid_records_go_to_the_dead_letter_topic(
    worker: WorkerProcess, events: Events, tenant: str
) -> None:
    now = await worker.now()
    good = [events.click(f"ok{i}", now - timedelta(minutes=i + 1)) for i in range(7)]
    unknown_type = events.click("bad", now)
    unknown_type["type"] = "link.hovered"
    unknown_field = events.click("bad", now)
    unknown_field["data"]["colour"] = "red"
    naive = events.click("bad", now)
    naive["occurred_at"] = "2026-06-01T10:00:00"
    future = events.click("bad", now + timedelta(minutes=6))
    missing = events.click("bad", now)
    del missing["contact_id"]
    bad = {
        "bad_json": b'{"event_id": "x", ',
        "unknown_type": orjson.dumps(unknown_type),
        "unknown_field": orjson.dumps(unknown_field),
        "naive_time": orjson.dumps(naive),
        "future_time": orjson.dumps(future),
        "missing_field": orjson.dumps(missing),
    }
    before = len(worker.dead_letters())
    topic = "engagement.clicks"
    for i, value in enumerate(bad.values()):
        await worker.publish_raw(
            topic, orjson.dumps(good[i]), f"{tenant}:ok{i}".encode()
        )
        await worker.publish_raw(topic, value, f"{tenant}:bad".encode())
    await worker.publish_raw(topic, orjson.dumps(good[6]), f"{tenant}:ok6".encode())
    await worker.settle()

    letters = worker.dead_letters()[before:]
    assert len(letters) == len(bad)
    by_value = {rec.value: dict(rec.headers) for rec in letters}
    for kind, value in bad.items():
        headers = by_value[value]  # the original bytes, untouched
        assert headers["error_kind"].decode() == kind
        assert headers["source_topic"].decode() == worker.prefix + topic
        assert int(headers["source_offset"]) >= 0
        assert int(headers["source_partition"]) >= 0
        assert headers["reason"]
    for i in range(7):
        signals = (await worker.contact(tenant, f"ok{i}"))["signals"]
        assert signals["links_clicked_7d"] == 1
    status, _ = await worker.get(f"/v1/tenants/{tenant}/contacts/bad")
    assert status == 404


async def test_counters_follow_the_clock(
    worker: WorkerProcess, events: Events, tenant: str
) -> None:
    start = await worker.now()
    c = "windows"
    await worker.publish(
        [
            events.click(c, start - timedelta(minutes=5)),
            events.campaign(c, start - timedelta(minutes=5)),
            events.read(c, start - timedelta(minutes=5), campaign="c1"),
            events.inbound(c, start - timedelta(minutes=5), reply_campaign="c1"),
            # Older than 90 days: moves last_* but never a counter.
            events.click(c, start - 100 * DAY),
        ]
    )
    await worker.settle()
    day0 = start.date()

    async def counts() -> tuple[int, int, int]:
        s = (await worker.contact(tenant, c))["signals"]
        per_kind = {
            (s[f"{k}_7d"], s[f"{k}_30d"], s[f"{k}_90d"])
            for k in (
                "links_clicked",
                "campaigns_received",
                "campaigns_read",
                "campaigns_replied",
            )
        }
        assert len(per_kind) == 1, s
        return per_kind.pop()

    assert await counts() == (1, 1, 1)
    for days, expected in [
        (6, (1, 1, 1)),
        (7, (0, 1, 1)),
        (29, (0, 1, 1)),
        (30, (0, 0, 1)),
        (89, (0, 0, 1)),
        (90, (0, 0, 0)),
    ]:
        target = datetime.combine(day0 + timedelta(days=days), datetime.min.time(), UTC)
        await worker.set_clock(max(target + timedelta(hours=1), await worker.now()))
        assert await counts() == expected, days
    signals = (await worker.contact(tenant, c))["signals"]
    assert signals["last_link_clicked"] == z(start - timedelta(minutes=5))


async def test_windows_use_the_tenant_time_zone(
    worker: WorkerProcess, events: Events, tenant: str
) -> None:
    await worker.set_timezone(tenant, "Pacific/Kiritimati")  # UTC+14
    tz = ZoneInfo("Pacific/Kiritimati")
    now = await worker.now()
    # 11:00 UTC is already tomorrow (01:00) in Kiritimati.
    utc_day = now.date() + timedelta(days=2)
    clicked = datetime.combine(utc_day, datetime.min.time(), UTC) + timedelta(hours=11)
    assert clicked.astimezone(tz).date() == utc_day + DAY
    await worker.set_clock(clicked + timedelta(minutes=1))
    await worker.publish([events.click("tz", clicked)])
    await worker.settle()
    # Local date of the click is D+1; the 7-day window holds it until local D+7,
    # which ends at 10:00 UTC on the UTC date D+7.
    last_inside = datetime.combine(utc_day + 7 * DAY, datetime.min.time(), tz)
    await worker.set_clock(last_inside + timedelta(hours=23, minutes=59))
    s = (await worker.contact(tenant, "tz"))["signals"]
    assert s["links_clicked_7d"] == 1
    await worker.set_clock(last_inside + DAY)
    s = (await worker.contact(tenant, "tz"))["signals"]
    assert s["links_clicked_7d"] == 0
    assert s["links_clicked_30d"] == 1


def _in_last(instant: datetime, days: int, now: datetime, tz: ZoneInfo) -> bool:
    today: date = now.astimezone(tz).date()
    return instant.astimezone(tz).date() >= today - timedelta(days=days - 1)


async def test_counter_and_in_last_agree_for_many_contacts(
    worker: WorkerProcess, events: Events, tenant: str
) -> None:
    zone_name = "America/Los_Angeles"
    await worker.set_timezone(tenant, zone_name)
    tz = ZoneInfo(zone_name)
    now = await worker.now()
    rng = random.Random(11)
    clicks: dict[str, list[datetime]] = {}
    batch = []
    for i in range(150):
        contact = f"g{i}"
        times = [
            now - timedelta(minutes=rng.randrange(1, 60 * 24 * 14))
            for _ in range(rng.randrange(1, 4))
        ]
        clicks[contact] = times
        batch += [events.click(contact, t) for t in times]
    await worker.publish(batch)
    await worker.settle()
    for step in range(4):
        current = await worker.now()
        for contact, times in clicks.items():
            s = (await worker.contact(tenant, contact))["signals"]
            last = max(times)
            assert s["last_link_clicked"] == z(last)
            inside = _in_last(last, 7, current, tz)
            assert (s["links_clicked_7d"] >= 1) == inside, (contact, step)
            assert s["links_clicked_7d"] == sum(
                _in_last(t, 7, current, tz) for t in times
            )
        await worker.set_clock(current + timedelta(hours=17 + step))
