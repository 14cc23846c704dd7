"""The example subscriber folds changes exactly, repeats included."""

from __future__ import annotations

import sqlite3

from examples.membership_table import SCHEMA, apply


def change(n: int, contact: str, kind: str) -> dict[str, object]:
    return {
        "event_id": f"e{n}",
        "tenant_id": "t",
        "segment_id": "s",
        "contact_id": contact,
        "change": kind,
    }


def test_folding_with_repeats_gives_the_membership() -> None:
    db = sqlite3.connect(":memory:")
    db.executescript(SCHEMA)
    stream = [
        change(1, "a", "entered"),
        change(2, "b", "entered"),
        change(1, "a", "entered"),
        change(3, "a", "exited"),
        change(2, "b", "entered"),
        change(4, "c", "entered"),
        change(3, "a", "exited"),
    ]
    applied = [apply(db, c) for c in stream]
    assert applied == [True, True, False, True, False, True, False]
    rows = {r[0] for r in db.execute("SELECT contact_id FROM member")}
    assert rows == {"b", "c"}
