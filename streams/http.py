"""The HTTP API of contract section 5, on aiohttp, served inside the worker.

Errors are JSON, ``{"error": {"status": 404, "code": "not_found", "message":
...}}``; a client never gets a 5xx for anything it sent. A token sees only
its tenants: any other tenant is answered 404, exactly as a tenant that does
not exist, so tokens cannot probe for tenant ids.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas.events import parse_rfc3339
from segments.errors import RuleError
from segments.registry import (
    SegmentEditError,
    SegmentLimitError,
    SegmentNotFoundError,
)
from segments.rules import parse_rule, parse_spec
from signals.errors import InvalidTimezoneError, ProfileStreamError
from signals.keys import ContactRef
from signals.profile import signals_json
from signals.windows import local_date_us, rfc3339, to_us
from streams.operations import SegmentOperations
from streams.retry import is_retriable
from streams.settings import Settings

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Largest request body accepted, in bytes.
MAX_BODY = 256 * 1024


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json"
    )


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    body = {"error": {"status": status, "code": code, "message": message, **extra}}
    return _json(body, status)


@dataclass(frozen=True, slots=True)
class Caller:
    admin: bool
    tenants: frozenset[str]

    def may_see(self, tenant_id: str) -> bool:
        return self.admin or tenant_id in self.tenants


class TenantUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    timezone: str | None = Field(None, min_length=1, max_length=64)
    segment_limit: int | None = Field(None, ge=0, le=10_000)


class PreviewBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    rule: dict[str, Any]
    limit: int = Field(20, ge=0, le=1000)


class ClockBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    now: str


class Api:
    """Routes and handlers; ``app`` is the aiohttp application."""

    def __init__(self, settings: Settings, ops: SegmentOperations) -> None:
        self.settings = settings
        self.ops = ops
        self.registry = ops.registry
        self.store = ops.store
        self.engine = ops.engine
        self._tokens = {
            token: frozenset(tenants) for token, tenants in settings.api_tokens.items()
        }
        self.ready: Callable[[], Awaitable[dict[str, bool]]] | None = None
        self.app = web.Application(
            client_max_size=MAX_BODY, middlewares=[self._errors, self._auth]
        )
        r = self.app.router
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/metrics", self.metrics)
        t = "/v1/tenants/{tenant}"
        r.add_put(t, self.put_tenant)
        r.add_get(t, self.get_tenant)
        r.add_post(f"{t}/segments", self.create_segment)
        r.add_get(f"{t}/segments", self.list_segments)
        r.add_post(f"{t}/segments/preview", self.preview)
        r.add_get(f"{t}/segments/{{segment}}", self.get_segment)
        r.add_put(f"{t}/segments/{{segment}}", self.edit_segment)
        r.add_delete(f"{t}/segments/{{segment}}", self.delete_segment)
        r.add_get(f"{t}/segments/{{segment}}/members", self.members)
        r.add_get(f"{t}/contacts/{{contact:.+}}", self.get_contact)
        if settings.clock.value == "manual":
            r.add_post("/v1/admin/clock", self.set_clock)
            r.add_get("/v1/admin/clock", self.get_clock)

    # -- middleware ----------------------------------------------------------------

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return _error(exc.status, exc.code, exc.message)
        except RuleError as exc:
            return _error(422, "invalid_rule", str(exc), path=exc.path)
        except web.HTTPException as exc:
            if exc.status == 413:
                return _error(413, "too_large", f"body over {MAX_BODY} bytes")
            if exc.status == 404:
                return _error(404, "not_found", "no such route")
            if exc.status == 405:
                return _error(405, "method_not_allowed", "method not allowed here")
            return _error(exc.status, "http_error", exc.reason)
        except ProfileStreamError as exc:
            if exc.retriable:
                logger.warning("Request failed on a backing service: %s", exc)
                return _error(503, "unavailable", "a backing service is unavailable")
            logger.exception("Request %s %s failed", request.method, request.path)
            return _error(500, "internal", "the request failed; see the worker log")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if is_retriable(exc):
                logger.warning("Request failed on a backing service: %s", exc)
                return _error(503, "unavailable", "a backing service is unavailable")
            logger.exception("Request %s %s failed", request.method, request.path)
            return _error(500, "internal", "the request failed; see the worker log")

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in ("/healthz", "/readyz", "/metrics"):
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "unauthorized", "send Authorization: Bearer <token>")
        caller = self._caller(token.strip())
        if caller is None:
            raise ApiError(401, "unauthorized", "unknown token")
        if request.path.startswith("/v1/admin") and not caller.admin:
            raise ApiError(403, "forbidden", "an admin token is required")
        tenant = request.match_info.get("tenant")
        if tenant is not None and not caller.may_see(tenant):
            raise ApiError(404, "not_found", "no such tenant")
        request["caller"] = caller
        return await handler(request)

    def _caller(self, token: str) -> Caller | None:
        admin = self.settings.admin_token
        if admin is not None and hmac.compare_digest(
            token.encode(), admin.get_secret_value().encode()
        ):
            return Caller(admin=True, tenants=frozenset())
        for known, tenants in self._tokens.items():
            if hmac.compare_digest(token.encode(), known.encode()):
                return Caller(admin=False, tenants=tenants)
        return None

    # -- helpers ---------------------------------------------------------------------

    @staticmethod
    async def _body(request: web.Request) -> Any:
        raw = await request.read()
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, "bad_json", f"body is not valid JSON: {exc}") from exc

    @staticmethod
    def _model(model: type[BaseModel], body: Any) -> Any:
        if not isinstance(body, dict):
            raise ApiError(422, "invalid_body", "the body must be a JSON object")
        try:
            return model.model_validate(body)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise ApiError(422, "invalid_body", f"{where}: {first['msg']}") from exc

    @staticmethod
    def _tenant_id(request: web.Request) -> str:
        tenant = request.match_info["tenant"]
        if (
            not tenant
            or len(tenant) > 64
            or not all(c.isascii() and (c.isalnum() or c in "_-") for c in tenant)
        ):
            raise ApiError(404, "not_found", "no such tenant")
        return tenant

    # -- routes ------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        checks = await self.ready() if self.ready is not None else {}
        ok = bool(checks) and all(checks.values())
        return _json({"ready": ok, "checks": checks}, 200 if ok else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        body = await self.engine.metrics.render()
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    async def get_tenant(self, request: web.Request) -> web.Response:
        tenant = await self.registry.tenant(self._tenant_id(request))
        return _json(tenant.to_json(self.settings.default_segment_limit))

    async def put_tenant(self, request: web.Request) -> web.Response:
        tenant_id = self._tenant_id(request)
        update: TenantUpdate = self._model(TenantUpdate, await self._body(request))
        if update.segment_limit is not None and not request["caller"].admin:
            raise ApiError(403, "forbidden", "only an admin token sets segment_limit")
        try:
            tenant = await self.registry.put_tenant(
                tenant_id, timezone=update.timezone, segment_limit=update.segment_limit
            )
        except InvalidTimezoneError as exc:
            raise ApiError(422, "invalid_body", f"timezone: {exc}") from exc
        return _json(tenant.to_json(self.settings.default_segment_limit))

    async def create_segment(self, request: web.Request) -> web.Response:
        tenant_id = self._tenant_id(request)
        spec = parse_spec(await request.read())
        try:
            segment, report = await self.ops.create(tenant_id, spec)
        except SegmentLimitError as exc:
            raise ApiError(409, "segment_limit", str(exc)) from exc
        key = "snapshot" if segment.kind == "static" else "backfill"
        return _json({**segment.to_json(), key: report.to_json()}, 201)

    async def list_segments(self, request: web.Request) -> web.Response:
        tenant = await self.registry.tenant(self._tenant_id(request))
        items = sorted(tenant.segments.values(), key=lambda s: (s.created_at, s.id))
        running = await self.store.progress(tenant.id)
        return _json(
            {
                "segments": [
                    {**s.to_json(), "progress": running.get(s.id)} for s in items
                ]
            }
        )

    async def get_segment(self, request: web.Request) -> web.Response:
        try:
            segment = await self.registry.get(
                self._tenant_id(request), request.match_info["segment"]
            )
        except SegmentNotFoundError as exc:
            raise ApiError(404, "not_found", str(exc)) from exc
        running = await self.store.progress(segment.tenant_id)
        return _json({**segment.to_json(), "progress": running.get(segment.id)})

    async def edit_segment(self, request: web.Request) -> web.Response:
        tenant_id = self._tenant_id(request)
        spec = parse_spec(await request.read())
        try:
            segment, report = await self.ops.edit(
                tenant_id, request.match_info["segment"], spec
            )
        except SegmentNotFoundError as exc:
            raise ApiError(404, "not_found", str(exc)) from exc
        except SegmentEditError as exc:
            raise ApiError(422, "invalid_edit", str(exc)) from exc
        return _json({**segment.to_json(), "backfill": report.to_json()})

    async def delete_segment(self, request: web.Request) -> web.Response:
        try:
            report = await self.ops.delete(
                self._tenant_id(request), request.match_info["segment"]
            )
        except SegmentNotFoundError as exc:
            raise ApiError(404, "not_found", str(exc)) from exc
        return _json({"deleted": True, "exited": report.exited})

    async def preview(self, request: web.Request) -> web.Response:
        tenant_id = self._tenant_id(request)
        body: PreviewBody = self._model(PreviewBody, await self._body(request))
        rule = parse_rule(body.rule)  # its error paths start at `rule`
        report = await self.ops.preview(tenant_id, rule, body.limit)
        return _json(
            {
                "count": report.entered,
                "sample": report.sample,
                "contacts": report.contacts,
            }
        )

    async def members(self, request: web.Request) -> web.Response:
        tenant_id = self._tenant_id(request)
        try:
            cursor = int(request.query.get("cursor", "0"))
            limit = int(request.query.get("limit", "100"))
        except ValueError as exc:
            raise ApiError(
                422, "invalid_query", "cursor and limit are integers"
            ) from exc
        if cursor < 0 or not 1 <= limit <= 1000:
            raise ApiError(422, "invalid_query", "cursor >= 0 and limit in 1..1000")
        try:
            ids, next_cursor, count = await self.ops.members(
                tenant_id, request.match_info["segment"], cursor, limit
            )
        except SegmentNotFoundError as exc:
            raise ApiError(404, "not_found", str(exc)) from exc
        return _json(
            {
                "members": ids,
                "count": count,
                "next_cursor": str(next_cursor) if next_cursor else None,
            }
        )

    async def get_contact(self, request: web.Request) -> web.Response:
        tenant_id = self._tenant_id(request)
        contact_id = request.match_info["contact"]
        ref = ContactRef(tenant_id, contact_id)
        loaded = await self.store.load([ref])
        await self.engine.cache.refresh(loaded.epoch)
        self.engine.clock.observe(loaded.clock_us)
        profile = loaded.profiles[ref]
        if not profile.exists:
            raise ApiError(404, "not_found", "no such contact")
        tenant = self.engine.cache.tenant(tenant_id)
        tz = tenant.tz
        today = local_date_us(self.engine.clock.now_us(), tz)
        view = profile.view(tenant_id, contact_id, tz)
        return _json(
            {
                "tenant_id": tenant_id,
                "contact_id": contact_id,
                "signals": signals_json(view, today),
                "attributes": dict(view.attributes),
                "segments": await self.ops.segments_of(tenant_id, contact_id),
            }
        )

    async def set_clock(self, request: web.Request) -> web.Response:
        body: ClockBody = self._model(ClockBody, await self._body(request))
        try:
            wanted: datetime = parse_rfc3339(body.now)
        except ValueError as exc:
            raise ApiError(422, "invalid_body", f"now: {exc}") from exc
        wanted_us = to_us(wanted)
        current = await self.store.set_clock(wanted_us)
        if current != wanted_us:
            raise ApiError(
                409,
                "clock_backwards",
                f"the clock only moves forward; it is at {rfc3339(current)}",
            )
        self.engine.clock.observe(current)
        logger.info("Test clock set to %s", rfc3339(current))
        return _json({"now": rfc3339(current)})

    async def get_clock(self, request: web.Request) -> web.Response:
        return _json({"now": rfc3339(await self.engine.now_us())})
