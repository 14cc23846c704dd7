"""Observing a batch of amounts at once counts exactly what one by one does."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from streams.metrics import LATENCY_BUCKETS, observe_many

amounts = st.lists(
    st.one_of(
        st.sampled_from(LATENCY_BUCKETS),  # exactly on a bound: that bucket
        st.floats(min_value=0, max_value=20, allow_nan=False),
    ),
    max_size=60,
)


def _histogram() -> tuple[CollectorRegistry, Histogram]:
    registry = CollectorRegistry()
    return registry, Histogram("h", "h", buckets=LATENCY_BUCKETS, registry=registry)


def _samples(registry: CollectorRegistry) -> dict[str, float]:
    """Bucket, count and sum samples by name and labels."""
    out = {}
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("h_") and "created" not in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


@given(amounts)
def test_observe_many_equals_observe_one_by_one(values: list[float]) -> None:
    one_by_one, h1 = _histogram()
    for v in values:
        h1.observe(v)
    batched, h2 = _histogram()
    observe_many(h2, values)
    # Sums may differ in the last bits: the additions are grouped otherwise.
    assert _samples(batched) == pytest.approx(_samples(one_by_one))


def test_a_histogram_without_the_known_layout_is_observed_one_by_one() -> None:
    class Plain:
        def __init__(self) -> None:
            self.seen: list[float] = []

        def observe(self, amount: float) -> None:
            self.seen.append(amount)

    plain = Plain()
    observe_many(plain, [0.5, 3.0])  # type: ignore[arg-type]
    assert plain.seen == [0.5, 3.0]
