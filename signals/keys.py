"""The Redis key layout: every key this project writes is named here.

``{...}`` is a Redis Cluster hash tag: keys with the same tag live in the same
slot, so a Lua script may touch them together.

========================================  ========  ==============================
key                                       type      holds
========================================  ========  ==============================
``<p>:c:{<tenant>:<contact>}``            string    ``<version>|<profile>`` (zstd-
                                                    compressed JSON,
                                                    ``signals.profile``)
``<p>:o:{<tenant>:<contact>}``            string    membership changes written but
                                                    not yet acknowledged by Kafka
``<p>:w:{<shard>}``                       zset      wake-ups: ``tenant:contact`` by
                                                    the instant (µs) an active
                                                    segment's answer can change
``<p>:wv:{<shard>}``                      hash      ``tenant:contact`` -> the
                                                    version behind its wake-up
``<p>:t:{<tenant>}:contacts``             set       contact ids of the tenant
``<p>:t:{<tenant>}:config``               hash      ``timezone``, ``segment_limit``
``<p>:t:{<tenant>}:segments``             hash      segment id -> definition JSON
``<p>:t:{<tenant>}:progress``             hash      segment id -> ``done/total`` of a
                                                    backfill, snapshot or deletion
``<p>:m:{<tenant>:<segment>}``            set       members of a segment (index)
``<p>:tenants``                           set       tenants with settings/segments
``<p>:dl:{<topic>|<kind>}:<partition>``   string    highest input offset whose dead
                                                    letter Kafka acknowledged
``<p>:dl:{<topic>|<kind>}:<partition>``   hash      dead-letter partition -> the
``:positions``                                      offset before which none of
                                                    the partition's unmarked
                                                    letters can be
``<p>:epoch``                             string    bumped on every definition or
                                                    tenant change; workers reload
``<p>:clock``                             string    the manual test clock (µs)
========================================  ========  ==============================

A contact's two keys share the tag ``{tenant:contact}``. Tenant ids cannot hold
``:``, ``{`` or ``}`` (contract section 1), so the tag is unambiguous; a
contact id may hold any printable character, and since the kind letter sits
before the tag, two different contacts never share a key name.
"""

from __future__ import annotations

import zlib
from typing import NamedTuple

#: Wake-ups are spread over this many shards, so no single key is hot and a
#: cluster spreads them; the leader sweeps them all.
WAKE_SHARDS = 16


def text(value: bytes | str) -> str:
    """A Redis reply as text (the client returns bytes)."""
    return value.decode() if isinstance(value, bytes) else value


class ContactRef(NamedTuple):
    tenant_id: str
    contact_id: str

    @property
    def member(self) -> str:
        """The name of this contact in wake-up sets: ``tenant:contact``."""
        return f"{self.tenant_id}:{self.contact_id}"

    @classmethod
    def from_member(cls, member: str) -> ContactRef:
        tenant, _, contact = member.partition(":")
        return cls(tenant, contact)

    @property
    def record_key(self) -> bytes:
        """The Kafka record key of this contact (contract section 1)."""
        return self.member.encode()


class Keys:
    """Key names under one namespace prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.tenants = f"{prefix}:tenants"
        self.epoch = f"{prefix}:epoch"
        self.clock = f"{prefix}:clock"

    def contact(self, ref: ContactRef) -> str:
        return f"{self.prefix}:c:{{{ref.tenant_id}:{ref.contact_id}}}"

    def outbox(self, ref: ContactRef) -> str:
        return f"{self.prefix}:o:{{{ref.tenant_id}:{ref.contact_id}}}"

    def wake_shard(self, ref: ContactRef) -> int:
        return zlib.crc32(ref.member.encode()) % WAKE_SHARDS

    def wakeups(self, shard: int) -> str:
        return f"{self.prefix}:w:{{{shard}}}"

    def wake_versions(self, shard: int) -> str:
        return f"{self.prefix}:wv:{{{shard}}}"

    def tenant_contacts(self, tenant_id: str) -> str:
        return f"{self.prefix}:t:{{{tenant_id}}}:contacts"

    def tenant_config(self, tenant_id: str) -> str:
        return f"{self.prefix}:t:{{{tenant_id}}}:config"

    def tenant_segments(self, tenant_id: str) -> str:
        return f"{self.prefix}:t:{{{tenant_id}}}:segments"

    def deadletter_mark(self, topic: str, partition: int) -> str:
        return f"{self.prefix}:dl:{{{topic}}}:{partition}"

    def deadletter_positions(self, topic: str, partition: int) -> str:
        """Per dead-letter partition, where the letters of an input partition
        that its mark may not cover yet can start."""
        return f"{self.prefix}:dl:{{{topic}}}:{partition}:positions"

    def tenant_progress(self, tenant_id: str) -> str:
        return f"{self.prefix}:t:{{{tenant_id}}}:progress"

    def members(self, tenant_id: str, segment_id: str) -> str:
        return f"{self.prefix}:m:{{{tenant_id}:{segment_id}}}"
