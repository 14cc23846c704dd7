"""Writes the JSON Schema files of the wire formats next to this module.

Run ``profilestream schemas`` after changing a model; a test fails while the
committed files differ from what the models generate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from schemas.events import event_json_schema
from schemas.membership import membership_json_schema

HERE = Path(__file__).parent

SCHEMAS = {
    "event.schema.json": event_json_schema,
    "membership.schema.json": membership_json_schema,
}


def render(schema: dict[str, Any]) -> bytes:
    return (
        orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
    )


def write_schemas(directory: Path = HERE) -> list[Path]:
    written = []
    for name, build in SCHEMAS.items():
        path = directory / name
        path.write_bytes(render(build()))
        written.append(path)
    return written
