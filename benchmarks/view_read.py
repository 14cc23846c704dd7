"""The read of a walk, in isolation: stored profile -> view -> rule.

Folds ``bench_data``'s events into profiles in memory (no Redis, no Kafka),
encodes them as the store keeps them, then times, per contact, what preview
and snapshot do with each: ``stored_view`` alone, and ``stored_view`` with
the benchmark's evaluation rule. Each figure is the fastest of ``--repeats``
passes over all profiles, which keeps the machine's drift out of a
comparison of two versions of the code (run it in each checkout).

    .venv/bin/python benchmarks/view_read.py --contacts 5000 --events 50000
"""

from __future__ import annotations

import argparse
import time
import timeit
from collections import defaultdict
from collections.abc import Callable
from zoneinfo import ZoneInfo

import orjson
from bench_data import EVAL_RULE, PartSpec, part_events

from schemas.events import parse_event
from segments.evaluate import compile_rule
from segments.rules import parse_rule
from signals.profile import Profile, stored_view
from signals.windows import US, local_date_us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=5_000)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()

    tz = ZoneInfo("Asia/Kolkata")
    now_us = time.time_ns() // 1000 // (86_400 * US) * 86_400 * US
    part = PartSpec("", "", "r0", 0, 1, args.events, args.contacts, now_us)
    profiles: dict[str, Profile] = defaultdict(Profile)
    for raw in part_events(part):
        event = parse_event(orjson.dumps(raw))
        profiles[event.contact_id].apply(event, tz, now_us, 24 * 3600 * US)
    stored = [p.encode() for p in profiles.values()]
    rule = compile_rule(parse_rule(EVAL_RULE))
    today = local_date_us(now_us, tz)

    def per_contact(work: Callable[[], object]) -> float:
        best = min(timeit.repeat(work, number=1, repeat=args.repeats))
        return best / len(stored) * 1e6

    view_only = per_contact(lambda: [stored_view(s, "t", "c", tz) for s in stored])
    with_rule = per_contact(
        lambda: [rule.matches(stored_view(s, "t", "c", tz), today, tz) for s in stored]
    )
    print(
        f"{len(stored):,} profiles of {args.events / len(stored):.1f} events, "
        f"{sum(map(len, stored)) / len(stored):.1f} B stored on average: "
        f"stored_view {view_only:.2f} µs, stored_view + rule {with_rule:.2f} µs "
        "per contact"
    )


if __name__ == "__main__":
    main()
