"""Tenants and segment definitions, kept in Redis where every worker sees them.

Writes go through ``Registry``; each one bumps the shared epoch. Every worker
holds a ``RegistryCache`` and reloads it when the epoch it reads with each
batch differs from the one it loaded, so an edit takes effect on all workers
within one batch, without a restart. A worker that evaluates with a stale
definition can only write a contact that the backfill of the new definition
has not written yet; the backfill then reads that write and corrects it, and
the compare-and-set of the store rejects the stale write otherwise.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

import orjson
from redis.asyncio import Redis

from segments.errors import SegmentError
from segments.evaluate import CompiledRule, compile_rule
from segments.rules import Rule, SegmentSpec, parse_rule
from signals.keys import Keys, text
from signals.windows import zone

logger = logging.getLogger(__name__)

_CREATE = """
local limit = tonumber(ARGV[3])
if redis.call('HLEN', KEYS[1]) >= limit then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[4])
redis.call('INCR', KEYS[2])
return 1
"""


class SegmentLimitError(SegmentError):
    """The tenant already holds as many segments as its limit allows."""


class SegmentNotFoundError(SegmentError):
    pass


class SegmentEditError(SegmentError):
    """An edit the segment's kind does not allow."""


@dataclass(frozen=True, slots=True)
class Segment:
    """One stored segment definition."""

    id: str
    tenant_id: str
    name: str
    kind: Literal["active", "static"]
    rule: Rule
    version: int
    created_at: str
    updated_at: str
    #: For a static segment, the instant its snapshot was taken.
    as_of: str | None = None
    compiled: CompiledRule = field(compare=False, repr=False, default=None)  # type: ignore[assignment]
    #: Every ``field`` the rule reads (``signal.x``, ``attribute.y``).
    fields: frozenset[str] = field(compare=False, repr=False, default=frozenset())

    def __post_init__(self) -> None:
        if self.compiled is None:
            object.__setattr__(self, "compiled", compile_rule(self.rule))
        names = frozenset(c.field for g in self.rule.any for c in g.all)
        object.__setattr__(self, "fields", names)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant_id": self.tenant_id,
            "name": self.name,
            "kind": self.kind,
            "rule": self.rule.model_dump(mode="json", exclude_none=False),
            "version": self.version,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "as_of": self.as_of,
        }

    @classmethod
    def from_json(cls, raw: bytes | str) -> Segment:
        document = orjson.loads(raw)
        return cls(
            id=document["id"],
            tenant_id=document["tenant_id"],
            name=document["name"],
            kind=document["kind"],
            rule=parse_rule(document["rule"]),
            version=document["version"],
            created_at=document["created_at"],
            updated_at=document["updated_at"],
            as_of=document.get("as_of"),
        )


@dataclass(frozen=True, slots=True)
class Tenant:
    """A tenant's settings and segments as one worker currently knows them."""

    id: str
    timezone: str = "UTC"
    segment_limit: int | None = None
    segments: Mapping[str, Segment] = field(default_factory=dict)
    #: Derived once (read on every update): the zone and the active segments.
    tz: ZoneInfo = field(init=False, compare=False, repr=False)
    active: tuple[Segment, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tz", zone(self.timezone))
        active = tuple(s for s in self.segments.values() if s.kind == "active")
        object.__setattr__(self, "active", active)

    def to_json(self, default_limit: int) -> dict[str, Any]:
        return {
            "tenant_id": self.id,
            "timezone": self.timezone,
            "segment_limit": self.limit(default_limit),
        }

    def limit(self, default_limit: int) -> int:
        return default_limit if self.segment_limit is None else self.segment_limit


def _now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Registry:
    """Reads and writes of tenants and segment definitions."""

    def __init__(self, redis: Redis, keys: Keys, default_limit: int) -> None:
        self.redis = redis
        self.keys = keys
        self.default_limit = default_limit

    async def epoch(self) -> int:
        return int(await self.redis.get(self.keys.epoch) or 0)

    async def tenant(self, tenant_id: str) -> Tenant:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.tenant_config(tenant_id))
        pipe.hgetall(self.keys.tenant_segments(tenant_id))
        config, raw_segments = await pipe.execute()
        limit = config.get(b"segment_limit")
        return Tenant(
            id=tenant_id,
            timezone=config.get(b"timezone", b"UTC").decode(),
            segment_limit=None if limit is None else int(limit),
            segments={
                k.decode(): Segment.from_json(v) for k, v in raw_segments.items()
            },
        )

    async def tenants(self) -> list[str]:
        return sorted(text(m) for m in await self.redis.smembers(self.keys.tenants))

    async def put_tenant(
        self,
        tenant_id: str,
        *,
        timezone: str | None = None,
        segment_limit: int | None = None,
    ) -> Tenant:
        """Set the fields given; the others keep their value."""
        if timezone is not None:
            zone(timezone)
        fields: list[str] = []
        pipe = self.redis.pipeline(transaction=True)
        if timezone is not None:
            fields.append("timezone")
            pipe.hset(self.keys.tenant_config(tenant_id), "timezone", timezone)
        if segment_limit is not None:
            fields.append("segment_limit")
            pipe.hset(
                self.keys.tenant_config(tenant_id), "segment_limit", segment_limit
            )
        pipe.sadd(self.keys.tenants, tenant_id)
        pipe.incr(self.keys.epoch)
        await pipe.execute()
        logger.info("Tenant %s settings changed: %s", tenant_id, sorted(fields))
        return await self.tenant(tenant_id)

    async def create(
        self, tenant_id: str, spec: SegmentSpec, *, as_of: str | None = None
    ) -> Segment:
        tenant = await self.tenant(tenant_id)
        now = _now_text()
        segment = Segment(
            id=f"seg_{secrets.token_hex(5)}",
            tenant_id=tenant_id,
            name=spec.name,
            kind=spec.kind,
            rule=spec.rule,
            version=1,
            created_at=now,
            updated_at=now,
            as_of=as_of,
        )
        limit = tenant.limit(self.default_limit)
        created = await self.redis.eval(
            _CREATE,
            3,
            self.keys.tenant_segments(tenant_id),
            self.keys.epoch,
            self.keys.tenants,
            segment.id,
            orjson.dumps(segment.to_json()),
            limit,
            tenant_id,
        )
        if not created:
            raise SegmentLimitError(
                f"tenant {tenant_id!r} already holds its limit of {limit} segments"
            )
        logger.info(
            "Segment %s (%s) created for tenant %s", segment.id, segment.kind, tenant_id
        )
        return segment

    async def get(self, tenant_id: str, segment_id: str) -> Segment:
        raw = await self.redis.hget(self.keys.tenant_segments(tenant_id), segment_id)
        if raw is None:
            raise SegmentNotFoundError(f"no segment {segment_id!r}")
        return Segment.from_json(raw)

    async def save(self, segment: Segment) -> None:
        """Store a changed definition (an edit, or a static snapshot's as-of)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(
            self.keys.tenant_segments(segment.tenant_id),
            segment.id,
            orjson.dumps(segment.to_json()),
        )
        pipe.incr(self.keys.epoch)
        await pipe.execute()

    async def edit(self, tenant_id: str, segment_id: str, spec: SegmentSpec) -> Segment:
        old = await self.get(tenant_id, segment_id)
        if spec.kind != old.kind:
            raise SegmentEditError(
                f"a segment's kind cannot change ({old.kind} -> {spec.kind}); "
                "create a new segment instead"
            )
        if old.kind == "static" and spec.rule != old.rule:
            raise SegmentEditError(
                "a static segment's rule cannot change: its members were fixed "
                "at creation; create a new segment instead"
            )
        new = Segment(
            id=old.id,
            tenant_id=tenant_id,
            name=spec.name,
            kind=old.kind,
            rule=spec.rule,
            version=old.version + 1,
            created_at=old.created_at,
            updated_at=_now_text(),
            as_of=old.as_of,
        )
        await self.save(new)
        logger.info(
            "Segment %s of tenant %s edited (version %d)",
            segment_id,
            tenant_id,
            new.version,
        )
        return new

    async def delete(self, tenant_id: str, segment_id: str) -> Segment:
        old = await self.get(tenant_id, segment_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hdel(self.keys.tenant_segments(tenant_id), segment_id)
        pipe.incr(self.keys.epoch)
        await pipe.execute()
        logger.info("Segment %s of tenant %s deleted", segment_id, tenant_id)
        return old


class RegistryCache:
    """One worker's snapshot of every tenant, reloaded when the epoch moves."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.epoch = -1
        self._tenants: dict[str, Tenant] = {}

    async def refresh(self, epoch: int) -> None:
        if epoch == self.epoch:
            return
        tenants = {
            t: await self.registry.tenant(t) for t in await self.registry.tenants()
        }
        self._tenants = tenants
        self.epoch = epoch
        logger.debug(
            "Definitions reloaded at epoch %d (%d tenants)", epoch, len(tenants)
        )

    def tenant(self, tenant_id: str) -> Tenant:
        return self._tenants.get(tenant_id) or Tenant(id=tenant_id)
