"""The HTTP API's authentication, tenant isolation and error answers."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.events import Events
from tests.harness import WorkerProcess

RULE = {
    "any": [{"all": [{"field": "signal.links_clicked_7d", "op": "gte", "value": 1}]}]
}


@pytest.fixture
def isolated(token_tenants: dict[str, list[str]]) -> tuple[str, str]:
    return token_tenants["token-a"][0], token_tenants["token-b"][0]


async def test_requests_need_a_known_bearer_token(
    worker: WorkerProcess, tenant: str
) -> None:
    for token in (None, "wrong"):
        status, body = await worker.request("GET", f"/v1/tenants/{tenant}", token=token)
        assert status == 401
        assert body["error"]["code"] == "unauthorized"


async def test_a_token_sees_nothing_of_other_tenants(
    worker: WorkerProcess, isolated: tuple[str, str]
) -> None:
    a, b = isolated
    now = await worker.now()
    await worker.publish([Events(b).click("c1", now - timedelta(minutes=1))])
    await worker.settle()
    routes = [
        ("GET", f"/v1/tenants/{b}", None),
        ("PUT", f"/v1/tenants/{b}", {"timezone": "UTC"}),
        ("GET", f"/v1/tenants/{b}/segments", None),
        (
            "POST",
            f"/v1/tenants/{b}/segments",
            {"name": "x", "kind": "active", "rule": RULE},
        ),
        ("POST", f"/v1/tenants/{b}/segments/preview", {"rule": RULE, "limit": 5}),
        ("GET", f"/v1/tenants/{b}/segments/seg_x", None),
        (
            "PUT",
            f"/v1/tenants/{b}/segments/seg_x",
            {"name": "x", "kind": "active", "rule": RULE},
        ),
        ("DELETE", f"/v1/tenants/{b}/segments/seg_x", None),
        ("GET", f"/v1/tenants/{b}/segments/seg_x/members", None),
        ("GET", f"/v1/tenants/{b}/contacts/c1", None),
    ]
    for method, path, body in routes:
        status, answer = await worker.request(method, path, body, token="token-a")
        assert status == 404, (method, path, answer)
    status, _ = await worker.request(
        "GET", f"/v1/tenants/{b}/contacts/c1", token="token-b"
    )
    assert status == 200
    status, _ = await worker.request("GET", f"/v1/tenants/{a}", token="token-a")
    assert status == 200


async def test_admin_routes_and_fields_need_the_admin_token(
    worker: WorkerProcess, isolated: tuple[str, str]
) -> None:
    a, _ = isolated
    status, _ = await worker.request(
        "POST", "/v1/admin/clock", {"now": "2030-01-01T00:00:00Z"}, token="token-a"
    )
    assert status == 403
    status, body = await worker.request(
        "PUT", f"/v1/tenants/{a}", {"segment_limit": 50}, token="token-a"
    )
    assert status == 403, body
    status, body = await worker.request(
        "PUT", f"/v1/tenants/{a}", {"segment_limit": 12}
    )
    assert (status, body["segment_limit"]) == (200, 12)


@pytest.mark.parametrize(
    ("method", "suffix", "raw", "status", "code"),
    [
        ("PUT", "", b"{nope", 400, "bad_json"),
        ("PUT", "", b"[]", 422, "invalid_body"),
        ("PUT", "", b'{"timezone": "Mars/Olympus"}', 422, "invalid_body"),
        ("PUT", "", b'{"timezone": 5}', 422, "invalid_body"),
        ("PUT", "", b'{"colour": "red"}', 422, "invalid_body"),
        ("POST", "/segments", b'{"name": "x", "kind": "active"}', 422, "invalid_rule"),
        ("POST", "/segments/preview", b'{"rule": {"any": []}}', 422, "invalid_rule"),
        (
            "POST",
            "/segments/preview",
            b'{"rule": {}, "limit": "5"}',
            422,
            "invalid_body",
        ),
        ("GET", "/segments/nope", b"", 404, "not_found"),
        ("GET", "/contacts/nobody", b"", 404, "not_found"),
        ("GET", "/nothing/here", b"", 404, "not_found"),
        ("PATCH", "", b"{}", 405, "method_not_allowed"),
        ("PUT", "", b'{"timezone": "' + b"x" * 300_000 + b'"}', 413, "too_large"),
    ],
    ids=[
        "bad-json",
        "not-object",
        "bad-zone",
        "zone-type",
        "unknown-field",
        "no-rule",
        "empty-rule",
        "limit-type",
        "no-segment",
        "no-contact",
        "no-route",
        "wrong-method",
        "too-large",
    ],
)
async def test_bad_requests_get_a_json_error(
    worker: WorkerProcess,
    tenant: str,
    method: str,
    suffix: str,
    raw: bytes,
    status: int,
    code: str,
) -> None:
    got, body = await worker.request(method, f"/v1/tenants/{tenant}{suffix}", raw=raw)
    assert got == status, body
    assert body["error"]["code"] == code
    assert body["error"]["message"]


async def test_the_clock_only_moves_forward(worker: WorkerProcess) -> None:
    now = await worker.now()
    status, body = await worker.request(
        "POST",
        "/v1/admin/clock",
        {"now": (now - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")},
    )
    assert status == 409
    assert body["error"]["code"] == "clock_backwards"
    status, body = await worker.request(
        "POST", "/v1/admin/clock", {"now": "2026-06-01T12:00:00"}
    )
    assert status == 422
    assert await worker.now() == now


async def test_health_endpoints_need_no_token(worker: WorkerProcess) -> None:
    status, body = await worker.request("GET", "/healthz", token=None)
    assert (status, body["status"]) == (200, "ok")
    status, body = await worker.request("GET", "/readyz", token=None)
    assert status == 200
    assert body["checks"] == {"redis": True, "kafka": True, "group_joined": True}
