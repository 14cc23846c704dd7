"""Membership records land where Kafka's default partitioner puts their key."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from streams.kafka import KeyHashes


@given(
    keys=st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=50),
    partitions=st.integers(min_value=1, max_value=64),
)
def test_same_partition_as_the_default_partitioner(
    keys: list[bytes], partitions: int
) -> None:
    hashes = KeyHashes(limit=8)
    numbers = list(range(partitions))
    for key in keys + keys:  # the second time from the remembered hash
        expected = DefaultPartitioner()(key, numbers, numbers)
        assert hashes.partition(key, partitions) == expected


def test_the_memory_starts_over_at_its_limit() -> None:
    hashes = KeyHashes(limit=3)
    for n in range(3):
        hashes.partition(f"acme:c{n}".encode(), 4)
    assert len(hashes._hashes) == 3
    hashes.partition(b"acme:c3", 4)
    assert len(hashes._hashes) == 1
    # A partition count that changed is applied to the remembered hash.
    key = b"acme:c3"
    assert hashes.partition(key, 7) == DefaultPartitioner()(key, list(range(7)), [])
