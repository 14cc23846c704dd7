"""Logging for operators: our steps at INFO, the frameworks' chatter at WARNING.

faust and mode log every service start and stop at INFO, aiokafka every group
join; an operator needs to know that the worker started, which partitions it
holds, what a backfill did, and what went wrong. With ``LOG_JSON=true`` each
line is one JSON object (``ts``, ``level``, ``logger``, ``message``, and
``exc`` when there is a traceback), for log shippers.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import orjson

_OURS = ("signals", "segments", "streams", "schemas")
_CHATTY = ("faust", "mode", "aiokafka", "kafka", "aiohttp.access")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure(level: str = "INFO", as_json: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if as_json
        else logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in _OURS:
        logging.getLogger(name).setLevel(level.upper())
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING)
