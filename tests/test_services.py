"""Smoke tests proving ``kafka_bootstrap`` and ``redis_url`` reach real servers."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

pytestmark = pytest.mark.services


async def test_kafka_round_trip(kafka_bootstrap: str) -> None:
    topic = f"test-services-{uuid.uuid4().hex}"
    key = b"contact-1"
    value = uuid.uuid4().bytes
    headers = [("source", b"test_services")]

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        sent = await producer.send_and_wait(topic, value, key=key, headers=headers)
    finally:
        await producer.stop()
    assert sent.topic == topic

    partition = TopicPartition(topic, sent.partition)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign([partition])
        consumer.seek(partition, sent.offset)
        record = await asyncio.wait_for(consumer.getone(), timeout=30)
    finally:
        await consumer.stop()

    assert (record.topic, record.partition, record.offset) == (
        topic,
        sent.partition,
        sent.offset,
    )
    assert record.key == key
    assert record.value == value
    assert list(record.headers) == headers


async def test_redis_set_get_and_info(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    key = f"test-services:{uuid.uuid4().hex}"
    try:
        assert await client.set(key, b"hello", ex=60)
        assert await client.get(key) == b"hello"
        info = await client.info("server")
        assert "redis_version" in info
        assert int(str(info["redis_version"]).split(".")[0]) >= 7
        assert await client.delete(key) == 1
    finally:
        await client.aclose()
