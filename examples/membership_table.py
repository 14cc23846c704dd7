"""Keep a local membership table from the ``segments.membership`` topic.

A complete subscriber: reads the topic with its own consumer group, skips
records whose ``event_id`` it has already applied (delivery is at least once),
and keeps ``(tenant, segment, contact)`` rows in SQLite. Offsets are committed
only after the rows are, so a crash re-reads rather than loses records.

    python examples/membership_table.py --bootstrap 127.0.0.1:9092 --db members.db
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3

import orjson
from aiokafka import AIOKafkaConsumer

SCHEMA = """
CREATE TABLE IF NOT EXISTS member (
    tenant_id TEXT, segment_id TEXT, contact_id TEXT,
    PRIMARY KEY (tenant_id, segment_id, contact_id));
CREATE TABLE IF NOT EXISTS applied (event_id TEXT PRIMARY KEY);
"""


def apply(db: sqlite3.Connection, change: dict[str, object]) -> bool:
    """Apply one change; False when it was a repeat."""
    try:
        db.execute("INSERT INTO applied VALUES (?)", (change["event_id"],))
    except sqlite3.IntegrityError:
        return False
    key = (change["tenant_id"], change["segment_id"], change["contact_id"])
    if change["change"] == "entered":
        db.execute("INSERT OR IGNORE INTO member VALUES (?, ?, ?)", key)
    else:
        db.execute(
            "DELETE FROM member WHERE tenant_id=? AND segment_id=? AND contact_id=?",
            key,
        )
    return True


async def run(bootstrap: str, topic: str, group: str, db_path: str) -> None:
    db = sqlite3.connect(db_path)
    db.executescript(SCHEMA)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=1000)
            if not batch:
                continue
            with db:  # one SQLite transaction per batch
                for records in batch.values():
                    for record in records:
                        apply(db, orjson.loads(record.value))
            await consumer.commit()
    finally:
        await consumer.stop()
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--topic", default="segments.membership")
    parser.add_argument("--group", default="membership-table")
    parser.add_argument("--db", default="members.db")
    args = parser.parse_args()
    asyncio.run(run(args.bootstrap, args.topic, args.group, args.db))


if __name__ == "__main__":
    main()
