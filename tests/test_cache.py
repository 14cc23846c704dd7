"""The worker's profile cache on its own (the update path is covered by the
pipeline tests, which run with the cache on)."""

from __future__ import annotations

from signals.cache import ProfileCache
from signals.keys import ContactRef
from signals.profile import Profile


def ref(n: int) -> ContactRef:
    return ContactRef("t", f"c{n}")


def test_take_removes_entries_and_counts_hits_and_misses() -> None:
    cache = ProfileCache(10)
    profile = Profile(version=3)
    profile.touched = frozenset({"signal.x"})  # what the last update touched
    cache.put(ref(1), profile, b"[1]")
    found = cache.take([ref(1), ref(2)])
    assert list(found) == [ref(1)]
    assert found[ref(1)].profile is profile
    assert found[ref(1)].outbox == b"[1]"
    assert profile.touched == frozenset()  # a fresh update starts with nothing touched
    assert (cache.hits, cache.misses, len(cache)) == (1, 1, 0)
    assert cache.take([ref(1)]) == {}  # taken: gone until put back


def test_least_recently_used_leave_first() -> None:
    cache = ProfileCache(3)
    for n in range(3):
        cache.put(ref(n), Profile(version=n + 1), b"")
    cache.put(ref(0), Profile(version=9), b"")  # 0 is now the most recent
    cache.put(ref(3), Profile(version=4), b"")
    assert len(cache) == 3
    assert set(cache.take([ref(n) for n in range(4)])) == {ref(0), ref(2), ref(3)}


def test_outbox_cleared_and_discarded_entries() -> None:
    cache = ProfileCache(5)
    cache.put(ref(1), Profile(version=1), b"[1]")
    cache.put(ref(2), Profile(version=1), b"[2]")
    cache.cleared_outbox(ref(1))
    cache.cleared_outbox(ref(7))  # not cached: nothing to do
    cache.discard([ref(2)])
    found = cache.take([ref(1), ref(2)])
    assert list(found) == [ref(1)]
    assert found[ref(1)].outbox == b""


def test_capacity_zero_keeps_nothing() -> None:
    cache = ProfileCache(0)
    cache.put(ref(1), Profile(version=1), b"")
    assert len(cache) == 0
    assert cache.take([ref(1)]) == {}
