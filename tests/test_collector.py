"""The worker's garbage-collection policy (``streams.collector``)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from streams.collector import Collector


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> tuple[Node, weakref.ref[Node]]:
    """Two objects that only a reference cycle keeps alive once dropped."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a, weakref.ref(b)


@pytest.fixture
def collector() -> Iterator[Collector]:
    was_enabled = gc.isenabled()
    c = Collector()
    c.start()
    yield c
    gc.unfreeze()
    if was_enabled:
        gc.enable()


def test_automatic_collection_is_off_and_batches_collect_young_cycles(
    collector: Collector,
) -> None:
    assert not gc.isenabled()
    head, alive = cycle()
    del head
    assert alive() is not None  # only the cycle holds it
    collector.after_batch()
    assert alive() is None


def test_survivors_are_frozen_and_a_full_collection_still_reclaims_them(
    collector: Collector,
) -> None:
    head, alive = cycle()
    frozen_before = gc.get_freeze_count()
    collector.after_batch()  # the cycle is alive: it is frozen
    assert gc.get_freeze_count() > frozen_before
    del head
    collector.after_batch()
    assert alive() is not None  # frozen garbage waits for the full collection
    collector._full -= 10_000  # as if FULL_EVERY_SECONDS had passed
    collector.tick()
    assert alive() is None
