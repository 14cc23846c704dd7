"""Dead letters published just before a crash are not published again.

The worker raises an input partition's dead-letter mark only after Kafka
acknowledged the letters. These tests stop it exactly in between (the mark
update fails as a crash would leave it), then let a fresh worker replay the
same records: every letter must be in the topic once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from signals.store import Store
from streams.ingest import Ingest
from streams.kafka import DeadLetter, Publisher
from streams.settings import Settings
from tests.engine_fixtures import fresh_ingest as worker
from tests.engine_fixtures import ingest_parts

pytestmark = pytest.mark.services


class Crash(Exception):
    pass


def letter(offset: int) -> DeadLetter:
    return DeadLetter(
        key=b"t:c",
        value=b"{not json",
        topic="engagement.clicks",
        partition=2,
        offset=offset,
        reason="not valid JSON",
        kind="bad_json",
    )


@pytest.fixture
async def parts(
    kafka_bootstrap: str, redis_url: str
) -> AsyncIterator[tuple[Settings, Store, Publisher]]:
    async with ingest_parts(kafka_bootstrap, redis_url, "dlr") as parts:
        yield parts


async def letters_in_topic(settings: Settings) -> list[int]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False
    )
    await consumer.start()
    try:
        topic = settings.topic("engagement.deadletter")
        tps = [TopicPartition(topic, p) for p in (0, 1)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        offsets: list[int] = []
        left = {tp for tp in tps if ends[tp] > 0}
        while left:
            batch = await consumer.getmany(*left, timeout_ms=1000)
            for tp, records in batch.items():
                for rec in records:
                    headers: dict[str, Any] = dict(rec.headers)
                    offsets.append(int(headers["source_offset"]))
                    if rec.offset + 1 >= ends[tp]:
                        left.discard(tp)
        return sorted(offsets)
    finally:
        await consumer.stop()


async def crash_after_publishing(ingest: Ingest, letters: list[DeadLetter]) -> None:
    """``_dead_letter`` that dies right after Kafka's acknowledgement."""
    store = ingest.engine.store
    real = store.set_deadletter_marks

    async def set_marks(marks: Any, positions: Any) -> None:
        if marks:  # the update after publishing; the one before passes
            raise Crash
        await real(marks, positions)

    store.set_deadletter_marks = set_marks  # type: ignore[method-assign]
    try:
        with pytest.raises(Crash):
            await ingest._dead_letter(letters)
    finally:
        store.set_deadletter_marks = real  # type: ignore[method-assign]


async def test_first_letters_of_a_partition_are_not_repeated_after_a_crash(
    parts: tuple[Settings, Store, Publisher],
) -> None:
    settings, store, _ = parts
    await crash_after_publishing(worker(*parts), [letter(5), letter(6)])
    assert await letters_in_topic(settings) == [5, 6]

    # The restarted worker replays the batch, plus one record further on.
    again = await worker(*parts)._dead_letter([letter(5), letter(6), letter(9)])
    assert again == 1
    assert await letters_in_topic(settings) == [5, 6, 9]
    assert (await store.deadletter_marks([("engagement.clicks|invalid", 2)]))[0][0] == 9


async def test_later_letters_are_not_repeated_after_a_crash(
    parts: tuple[Settings, Store, Publisher],
) -> None:
    settings, _, _ = parts
    first = worker(*parts)
    assert await first._dead_letter([letter(1)]) == 1  # marked as usual
    await crash_after_publishing(first, [letter(4)])
    assert await letters_in_topic(settings) == [1, 4]

    replay = worker(*parts)
    assert await replay._dead_letter([letter(1), letter(4), letter(7)]) == 1
    assert await letters_in_topic(settings) == [1, 4, 7]
    # Marked now: a further replay reads nothing more and publishes nothing.
    assert await replay._dead_letter([letter(4), letter(7)]) == 0
    assert await letters_in_topic(settings) == [1, 4, 7]
