"""Counts the Redis requests a benchmarked worker sends; loaded via PYTHONPATH.

``benchmarks/bench_lib.py`` starts workers with ``PYTHONPATH`` pointing here
and ``BENCH_REDIS_COUNTS`` naming a file. Python imports this module at start
up; it wraps two methods of redis-py's asyncio connection class (and
``pack_command`` of the worker's own connection classes, which pack with
hiredis, see ``signals/redis_client.py``):

* ``send_packed_command``: called once per request written to the socket, a
  whole pipeline or a single command, each followed by waiting for the
  reply: one call is one round trip;
* ``pack_command``: called once per command, inside a pipeline or not
  (``EVALSHA`` is one command; the commands a script runs inside Redis are
  not seen here, they are in the server's ``INFO commandstats``).

A daemon thread writes the totals to the file every 0.1 s (write, then
rename). The cost is one counter increment per request and per command.
Without ``BENCH_REDIS_COUNTS`` nothing is changed.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from typing import Any

_PATH = os.environ.get("BENCH_REDIS_COUNTS")


def _install(path: str) -> None:
    import orjson
    from redis.asyncio.connection import AbstractConnection

    totals = {"requests": 0, "commands": 0, "mget_keys": 0}
    by_command: Counter[str] = Counter()
    send = AbstractConnection.send_packed_command
    pack = AbstractConnection.pack_command

    async def send_packed_command(
        self: Any, command: Any, check_health: bool = True
    ) -> None:
        totals["requests"] += 1
        await send(self, command, check_health)

    def count(args: tuple[Any, ...]) -> None:
        totals["commands"] += 1
        name = args[0]
        name = name.decode() if isinstance(name, bytes) else str(name)
        name = name.split(" ", 1)[0].upper()
        by_command[name] += 1
        if name == "MGET":
            totals["mget_keys"] += len(args) - 1

    def pack_command(self: Any, *args: Any) -> list[bytes]:
        count(args)
        result: list[bytes] = pack(self, *args)
        return result

    AbstractConnection.send_packed_command = send_packed_command  # type: ignore[method-assign]
    AbstractConnection.pack_command = pack_command  # type: ignore[method-assign]

    # The worker's connections pack with hiredis (``signals.redis_client``):
    # count theirs too.
    try:
        from signals import redis_client
    except ImportError:
        pass
    else:
        for cls in (
            redis_client.HiredisConnection,
            redis_client.HiredisSSLConnection,
            redis_client.HiredisUnixConnection,
        ):
            own = cls.pack_command

            def counted(self: Any, *args: Any, _own: Any = own) -> list[bytes]:
                count(args)
                result: list[bytes] = _own(self, *args)
                return result

            cls.pack_command = counted  # type: ignore[method-assign]

    def dump() -> None:
        tmp = f"{path}.tmp"
        while True:
            data = {**totals, "by_command": dict(by_command), "at": time.time()}
            try:
                with open(tmp, "wb") as f:
                    f.write(orjson.dumps(data))
                os.replace(tmp, path)
            except OSError:
                pass
            time.sleep(0.1)

    threading.Thread(target=dump, name="bench-redis-counts", daemon=True).start()


if _PATH:
    _install(_PATH)
