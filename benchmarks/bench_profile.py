"""Where a worker's time goes: py-spy samples, summarised by component.

``Sampler`` runs ``py-spy record`` against a worker process while a phase of
the benchmark runs (``--nonblocking``: the worker is never paused, so the
phase's own figures stay honest) and keeps the folded stacks. ``summarize``
reads them back: the samples under one root function (``Ingest.run`` for a
drain, ``SegmentOperations.preview`` for a preview...) are split among the
components below, each sample going to the deepest frame that names one, so
the shares add up to 100 %. The functions with the largest inclusive share
come with it, for what the components do not say.

py-spy is a development dependency; without it (or without permission to
read another process's memory) a phase runs unsampled and the report says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench_lib import log

from signals.profile import NativeView, ProfileView

#: The frames of a contact view: its methods and properties (what rules ask
#: of a profile, and ``ProfileView`` built over a held or parsed profile),
#: and the window lookup they share. The compiled reader's own work has no
#: Python frame: it counts for ``stored_view`` and ``stored_state``, the
#: profile decode.
_VIEW_FRAMES = (
    "_window_slots",
    *(
        f"{view.__name__}.{name}"
        for view in (ProfileView, NativeView)
        for name, member in vars(view).items()
        if inspect.isfunction(member) or isinstance(member, property)
    ),
)

#: Components, by the functions (py-spy ``--function`` frame names) that do
#: their work. A sample counts for the deepest frame of its stack found here.
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Kafka fetch (aiokafka getmany)", ("AIOKafkaConsumer.getmany",)),
    ("event validation (pydantic)", ("Ingest._validate",)),
    ("fold of events into profiles", ("Profile.apply",)),
    ("profile decode", ("Profile.decode", "stored_view", "stored_state")),
    ("contact view for rules", _VIEW_FRAMES),
    ("rule evaluation", ("CompiledRule.matches",)),
    ("next wake-up", ("CompiledRule.next_change",)),
    ("membership records", ("Change.payload", "record")),
    ("profile encode (JSON + zstd)", ("Profile.encode",)),
    (
        "Redis reads (client side)",
        ("Store.load", "Store.views", "Store.documents", "Store.contact_ids"),
    ),
    ("Redis writes (client side)", ("Store.write", "Store.finish")),
    ("publishing to Kafka", ("Publisher.publish_membership",)),
    ("garbage collection between batches", ("Collector.after_batch",)),
    (
        "engine's own per-contact work",
        (
            "Engine.update_exclusive",
            "Engine.backfill",
            "Engine._apply",
            "Engine._next_wake",
            "Engine._deliver",
            "Engine._finish",
        ),
    ),
)

#: Where each phase's work starts in the worker.
ROOTS = {
    "drain": "Ingest.run",
    "preview": "SegmentOperations.preview",
    "backfill": "SegmentOperations.backfill",
    "snapshot": "SegmentOperations.snapshot",
}

_FRAME = re.compile(r"^(?P<name>.+?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _executable() -> str | None:
    """py-spy beside this interpreter (the project's venv), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def available() -> bool:
    return _executable() is not None


class Sampler:
    """``py-spy record`` of one process, from ``start`` until ``stop``."""

    def __init__(self, pid: int, out: Path, rate: int = 100) -> None:
        self.pid = pid
        self.out = out
        self.rate = rate
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = _executable()
        if exe is None:
            return
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(self.pid),
                "--rate",
                str(self.rate),
                "--nonblocking",
                "--function",
                "--format",
                "raw",
                "--output",
                str(self.out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.out.with_suffix(".log").open("wb"),
        )

    async def stop(self) -> Path | None:
        """Stop sampling; the folded stacks, or None when nothing was sampled."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        if not self.out.exists() or self.out.stat().st_size == 0:
            log(f"!! py-spy wrote no samples (see {self.out.with_suffix('.log')})")
            return None
        return self.out


@contextlib.asynccontextmanager
async def sampled(
    pid: int, out: Path, into: dict[str, Any], phase: str
) -> AsyncIterator[None]:
    """Sample ``pid`` while the block runs; its summary goes to ``into[phase]``."""
    sampler = Sampler(pid, out)
    sampler.start()
    try:
        yield
    finally:
        folded = await sampler.stop()
        if folded is not None:
            into[phase] = summarize(folded.read_text(), ROOTS[phase])


def _name(frame: str) -> str:
    m = _FRAME.match(frame)
    return m.group("name") if m else frame


def _label(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    file = m.group("file")
    for marker in ("site-packages/", "lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1].split("/", 1)[-1]
    return f"{m.group('name')} ({file})"


#: Work a root function starts as tasks of its own: their stacks begin at the
#: event loop, not under the root, and count for the root's phase. The
#: engine sends its compare-and-set writes as tasks while it computes, and
#: delivers a batch of events (publish, finish) while the next is applied;
#: the ingest marks a batch's offsets in a task once it is delivered; a
#: preview or snapshot reads each chunk's views in a task while the previous
#: chunk is evaluated.
SPAWNED = (
    "Store.write",
    "Engine._deliver",
    "Ingest._mark_when_delivered",
    "Store.views",
)


def summarize(folded: str, root: str, top: int = 25) -> dict[str, Any]:
    """Component shares and the top inclusive functions under ``root`` (and
    under the tasks it spawns, ``SPAWNED``)."""
    owner = {name: label for label, names in COMPONENTS for name in names}
    by_component: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in folded.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        names = [_name(f) for f in frames]
        start: str | None = None
        if root in names:
            start = root
        elif set(ROOTS.values()).isdisjoint(names):
            # A task on its own (under no phase's root): the root's if spawned.
            start = next((n for n in SPAWNED if n in names), None)
        if start is None:
            continue
        frames = frames[names.index(start) :]
        names = names[names.index(start) :]
        n = int(count)
        total += n
        component = f"rest of {root} (its own code, asyncio, logging)"
        for name in reversed(names):
            if name in owner:
                component = owner[name]
                break
        by_component[component] += n
        for label in {_label(f) for f in frames}:
            inclusive[label] += n
    return {
        "root": root,
        "samples": total,
        "components": {k: round(v / total, 4) for k, v in by_component.most_common()}
        if total
        else {},
        "top_inclusive": [
            [label, round(n / total, 4)]
            for label, n in sorted(inclusive.items(), key=lambda kv: (-kv[1], kv[0]))[
                :top
            ]
        ]
        if total
        else [],
    }
