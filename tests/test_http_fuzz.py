"""Hostile and malformed requests get a 4xx answer, never a 5xx.

A property-based fuzzer (hypothesis) builds requests from the API's own
routes: real and mangled paths (traversal, encodings, other tenants, very long
ids), random and wrong-typed JSON bodies, oversized bodies and bad tokens.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness import ADMIN_TOKEN, WorkerProcess

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)

rule_like = st.fixed_dictionaries(
    {
        "any": st.lists(
            st.fixed_dictionaries(
                {
                    "all": st.lists(
                        st.fixed_dictionaries(
                            {
                                "field": st.sampled_from(
                                    [
                                        "signal.links_clicked_7d",
                                        "signal.nope",
                                        "attribute.city",
                                        "attribute.",
                                        "x",
                                        "",
                                    ]
                                ),
                                "op": st.sampled_from(
                                    [
                                        "gte",
                                        "in_last",
                                        "is",
                                        "between",
                                        "day_in_month",
                                        "bogus",
                                        "",
                                    ]
                                ),
                                "value": json_values,
                            }
                        ),
                        max_size=3,
                    )
                }
            ),
            max_size=3,
        )
    }
)

bodies = st.one_of(
    json_values.map(orjson.dumps),
    st.fixed_dictionaries(
        {
            "name": st.text(max_size=300),
            "kind": st.sampled_from(["active", "static", "x"]),
            "rule": rule_like,
        }
    ).map(orjson.dumps),
    st.fixed_dictionaries({"rule": rule_like, "limit": st.integers(-5, 5000)}).map(
        orjson.dumps
    ),
    st.fixed_dictionaries(
        {"timezone": st.text(max_size=80), "segment_limit": st.integers(-10, 10**9)}
    ).map(orjson.dumps),
    st.binary(max_size=300),
    st.just(b"{" * 10_000),
)

segments = st.sampled_from(["seg_x", "..", "%2e%2e", "seg_" + "a" * 500, "%00", "é"])
tenants = st.sampled_from(["acme", "a" * 65, "bad tenant", "..", "%2F", "x:y", "ü"])
suffixes = st.one_of(
    st.just(""),
    st.just("/segments"),
    st.just("/segments/preview"),
    segments.map(lambda s: f"/segments/{s}"),
    segments.map(lambda s: f"/segments/{s}/members?cursor=-1&limit=abc"),
    st.text(min_size=1, max_size=60).map(lambda c: f"/contacts/{c}"),
    st.just("/contacts/../../admin/clock"),
)
paths = st.one_of(
    st.builds(lambda t, s: f"/v1/tenants/{t}{s}", tenants, suffixes),
    st.sampled_from(
        [
            "/v1/admin/clock",
            "/v1/admin/../tenants/x",
            "//v1//tenants",
            "/v1/tenants/",
            "/v1",
            "/metrics/../v1/admin/clock",
        ]
    ),
)
methods = st.sampled_from(["GET", "PUT", "POST", "DELETE", "PATCH"])
tokens = st.sampled_from([ADMIN_TOKEN, "token-a", "nope", None, ""])


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(method=methods, path=paths, body=bodies, token=tokens)
async def test_no_request_gets_a_server_error(
    worker: WorkerProcess, method: str, path: str, body: bytes, token: str | None
) -> None:
    if path == "/v1/admin/clock" and method == "POST" and token == ADMIN_TOKEN:
        body = b'{"now": "1999-01-01T00:00:00Z"}'  # never move the shared clock
    status, answer = await worker.request(method, path, raw=body, token=token)
    assert status < 500, (method, path, body[:200], answer)
    if status >= 400 and isinstance(answer, dict):
        error: dict[str, Any] = answer["error"]
        assert error["message"]
