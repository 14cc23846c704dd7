"""The benchmark's profile summary: which component each sample counts for."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bench_profile import summarize

LOOP = "<module> (cli.py:1);Worker.run (mode/worker.py:10);Ingest.run (ingest.py:5)"
WRITE = f"{LOOP};Store.write (signals/store.py:9)"
FOLDED = "\n".join(
    [
        # Under the root: encode nested in the write counts for the encode...
        f"{WRITE};Profile.encode (signals/profile.py:3) 6",
        # ...the rest of the write for the write...
        f"{WRITE};Pipeline.execute (redis/x.py:2) 2",
        # ...and what names no component for the root's own rest.
        f"{LOOP};Ingest.process (streams/ingest.py:40) 2",
        # A write task the root spawned (its stack starts at the event loop):
        # counted for the root's phase.
        "<module> (cli.py:1);Handle._run (asyncio/events.py:80);"
        "Store.write (signals/store.py:9);Profile.encode (signals/profile.py:3) 5",
        # So is the delivery of a batch, publishing while the next is applied.
        "<module> (cli.py:1);Handle._run (asyncio/events.py:80);"
        "Engine._deliver (streams/engine.py:7);"
        "Publisher.publish_membership (streams/kafka.py:4) 3",
        # Outside the root (another task of the worker): not counted.
        "<module> (cli.py:1);Web.handle (aiohttp/web.py:3) 50",
        # py-spy's partial stacks and a malformed line: skipped.
        "Profile.encode (signals/profile.py:3) 9",
        "garbage",
    ]
)


def test_each_sample_counts_once_for_its_deepest_component() -> None:
    summary = summarize(FOLDED, "Ingest.run")
    assert summary["samples"] == 18
    assert summary["components"] == {
        "profile encode (JSON + zstd)": round(11 / 18, 4),
        "publishing to Kafka": round(3 / 18, 4),
        "Redis writes (client side)": round(2 / 18, 4),
        "rest of Ingest.run (its own code, asyncio, logging)": round(2 / 18, 4),
    }
    assert abs(sum(summary["components"].values()) - 1.0) < 1e-3
    inclusive = dict(map(tuple, summary["top_inclusive"]))
    assert inclusive["Ingest.run (ingest.py)"] == round(10 / 18, 4)
    assert inclusive["Store.write (signals/store.py)"] == round(13 / 18, 4)
    assert inclusive["Pipeline.execute (redis/x.py)"] == round(2 / 18, 4)


def test_a_phase_without_samples_under_its_root_is_empty() -> None:
    # Stacks under another phase's root only (no task on its own).
    drain_only = "\n".join(
        line for line in FOLDED.splitlines() if "Handle._run" not in line
    )
    summary = summarize(drain_only, "SegmentOperations.preview")
    assert summary == {
        "root": "SegmentOperations.preview",
        "samples": 0,
        "components": {},
        "top_inclusive": [],
    }


def test_a_walks_view_reads_count_apart_from_the_decode() -> None:
    preview = "<module> (cli.py:1);SegmentOperations.preview (streams/operations.py:9)"
    read = f"{preview};stored_view (signals/profile.py:646)"
    folded = "\n".join(
        [
            # The read (the compiled reader's work has no frame of its own).
            f"{read} 4",
            f"{read};NativeView.__init__ (signals/profile.py:966) 1",
            # What the rule asks of either view, and the window it computes.
            f"{preview};CompiledRule.matches (segments/evaluate.py:5);"
            "NativeView.count (signals/profile.py:1021);"
            "_window_slots (signals/profile.py:814) 2",
            f"{preview};CompiledRule.matches (segments/evaluate.py:5);"
            "ProfileView.local_date (signals/profile.py:94) 1",
            f"{preview};CompiledRule.matches (segments/evaluate.py:5) 2",
        ]
    )
    summary = summarize(folded, "SegmentOperations.preview")
    assert summary["components"] == {
        "profile decode": 0.4,
        "contact view for rules": 0.4,
        "rule evaluation": 0.2,
    }
