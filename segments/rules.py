"""The segment definition language of contract section 3, and its validation.

A definition is an OR of groups, each an AND of conditions::

    {"name": "Clicked this week", "kind": "active",
     "rule": {"any": [{"all": [
       {"field": "signal.links_clicked_7d", "op": "gte", "value": 1}]}]}}

The pydantic models below check the shape (extra keys forbidden, 1-20 groups
of 1-20 conditions, strict JSON types: ``"5"`` is not a number and ``true`` is
not an integer). Each ``Condition`` then checks its meaning in one place,
``_problem``: the field names a known signal or an attribute, the operator
exists and suits the signal's type, the value has the form the operator takes.
Any instance of these models is therefore a valid rule, which is what lets the
evaluator compile it without checking anything again.

Attributes have no declared type: their type is the JSON type of each
contact's value. At definition time an ``attribute.<name>`` field takes every
operator, with a value valid for that operator; whether a contact's value
suits the operator is decided at evaluation, where a mismatch is false.

``parse_spec`` and ``parse_rule`` are the entry points for untrusted input.
They turn pydantic's ``ValidationError`` into one ``RuleError`` for the first
problem found, with a path in the client's own terms
(``rule.any[0].all[1].value``). Where the path ends:

* ``.field``, ``.op``, ``.value``: that part alone is wrong (unknown signal,
  unknown operator, malformed value);
* the condition itself: the operator exists but not for that field's type;
* a missing or unexpected key: that key.

A value that is absent and a value that is ``null`` mean the same: operators
that take no value (``is_set``, ``is_not_set``, ``day_in_this_month``) accept
either, every other operator refuses both. That way a definition dumped by
``model_dump`` parses back unchanged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import date
from typing import Annotated, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from segments.errors import RuleError
from signals.catalog import SIGNAL_TYPES, SignalType

SIGNAL_PREFIX: Final = "signal."
ATTRIBUTE_PREFIX: Final = "attribute."
MAX_ATTRIBUTE_NAME: Final = 128
MAX_GROUPS: Final = 20
MAX_CONDITIONS: Final = 20

#: The operators each signal type takes (contract section 3).
OPERATORS: Final[Mapping[SignalType, frozenset[str]]] = {
    SignalType.DATE: frozenset(
        {
            "in_last",
            "not_in_last",
            "day_in_last",
            "day_in_this_month",
            "day_in_month",
            "before",
            "after",
            "on",
            "is_set",
            "is_not_set",
        }
    ),
    SignalType.COUNT: frozenset({"eq", "ne", "gt", "gte", "lt", "lte", "between"}),
    SignalType.STRING: frozenset(
        {
            "is",
            "is_not",
            "in",
            "not_in",
            "contains",
            "not_contains",
            "starts_with",
            "is_set",
            "is_not_set",
        }
    ),
}

_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")


def _whole(low: int, high: int) -> Callable[[JsonValue], bool]:
    # ``type(...) is int`` rather than isinstance: JSON true is not a number.
    return lambda value: type(value) is int and low <= value <= high


def _is_int(value: JsonValue) -> bool:
    return type(value) is int


def _is_range(value: JsonValue) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and type(value[0]) is int
        and type(value[1]) is int
        and value[0] <= value[1]
    )


def _is_iso_date(value: JsonValue) -> bool:
    if not isinstance(value, str) or not _ISO_DATE.match(value):
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


def _is_str(value: JsonValue) -> bool:
    return isinstance(value, str)


def _is_str_list(value: JsonValue) -> bool:
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(item, str) for item in value)
    )


def _is_absent(value: JsonValue) -> bool:
    return value is None


_DAYS = "a whole number of days from {low} to {high}"

#: Every operator, the value it takes in words, and the check of that value.
_VALUES: Final[Mapping[str, tuple[str, Callable[[JsonValue], bool]]]] = {
    "in_last": (_DAYS.format(low=1, high=3650), _whole(1, 3650)),
    "not_in_last": (_DAYS.format(low=1, high=3650), _whole(1, 3650)),
    "day_in_last": (_DAYS.format(low=1, high=366), _whole(1, 366)),
    "day_in_this_month": ("no value", _is_absent),
    "day_in_month": ("a month number from 1 to 12", _whole(1, 12)),
    "before": ('a calendar date "YYYY-MM-DD"', _is_iso_date),
    "after": ('a calendar date "YYYY-MM-DD"', _is_iso_date),
    "on": ('a calendar date "YYYY-MM-DD"', _is_iso_date),
    "is_set": ("no value", _is_absent),
    "is_not_set": ("no value", _is_absent),
    **{op: ("an integer", _is_int) for op in ("eq", "ne", "gt", "gte", "lt", "lte")},
    "between": ("[min, max]: two integers, min <= max", _is_range),
    **{
        op: ("a string", _is_str)
        for op in ("is", "is_not", "contains", "not_contains", "starts_with")
    },
    "in": ("a non-empty list of strings", _is_str_list),
    "not_in": ("a non-empty list of strings", _is_str_list),
}

#: Every operator of every type: what an ``attribute.<name>`` field may use.
ALL_OPERATORS: Final = frozenset(_VALUES)

assert frozenset().union(*OPERATORS.values()) == ALL_OPERATORS


def _show(value: JsonValue) -> str:
    """A value as the client wrote it, cut short if long."""
    if value is None:
        return "no value"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:39] + "…"


def _problem(field: str, op: str, value: JsonValue) -> tuple[str, str] | None:
    """What is wrong with one condition: (the part to blame, why), or None.

    The part is ``"field"``, ``"op"``, ``"value"``, or ``""`` for the
    condition as a whole.
    """
    # 1. The field: a known signal, or an attribute with a sane name.
    if field.startswith(SIGNAL_PREFIX):
        name = field[len(SIGNAL_PREFIX) :]
        signal_type = SIGNAL_TYPES.get(name)
        if signal_type is None:
            return "field", f"unknown signal {name!r}"
        allowed = OPERATORS[signal_type]
    elif field.startswith(ATTRIBUTE_PREFIX):
        name = field[len(ATTRIBUTE_PREFIX) :]
        if not 1 <= len(name) <= MAX_ATTRIBUTE_NAME:
            return "field", (
                f"an attribute name is 1 to {MAX_ATTRIBUTE_NAME} characters long"
            )
        signal_type, allowed = None, ALL_OPERATORS
    else:
        return "field", (
            f"a field is 'signal.<name>' or 'attribute.<name>', not {field!r}"
        )

    # 2. The operator: one of the language, and one this signal's type has.
    if op not in ALL_OPERATORS:
        return "op", f"unknown operator {op!r}"
    if op not in allowed:
        return "", f"operator {op!r} is not valid for {signal_type} signal {name!r}"

    # 3. The value: the form this operator takes.
    expected, check = _VALUES[op]
    if not check(value):
        return "value", f"operator {op!r} takes {expected}, got {_show(value)}"
    return None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Condition(_Model):
    """``{"field": "signal.<name>" | "attribute.<name>", "op": ..., "value": ...}``."""

    field: str
    op: str
    value: JsonValue = None

    @property
    def is_attribute(self) -> bool:
        return self.field.startswith(ATTRIBUTE_PREFIX)

    @property
    def name(self) -> str:
        """The signal or attribute name, without its prefix."""
        return self.field.partition(".")[2]

    @model_validator(mode="after")
    def _check_meaning(self) -> Condition:
        problem = _problem(self.field, self.op, self.value)
        if problem is not None:
            part, reason = problem
            # The message travels in the context, not the template, so braces
            # in a client's field name cannot be taken for placeholders.
            raise PydanticCustomError(
                "rule", "{reason}", {"reason": reason, "part": part}
            )
        return self


class Group(_Model):
    """Conditions that must all hold."""

    all: Annotated[list[Condition], Field(min_length=1, max_length=MAX_CONDITIONS)]


class Rule(_Model):
    """Groups of which at least one must hold."""

    any: Annotated[list[Group], Field(min_length=1, max_length=MAX_GROUPS)]


class SegmentSpec(_Model):
    """A segment definition as clients create and edit it."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    kind: Literal["active", "static"]
    rule: Rule


def parse_spec(raw: bytes | Mapping[str, object]) -> SegmentSpec:
    """Validate a definition body (JSON bytes or decoded), or raise ``RuleError``.

    Paths start at the body: ``name``, ``rule.any[0].all[1].value``.
    """
    try:
        if isinstance(raw, bytes):
            return SegmentSpec.model_validate_json(raw)
        return SegmentSpec.model_validate(raw)
    except ValidationError as exc:
        raise _rule_error(exc, root="") from exc


def parse_rule(raw: bytes | Mapping[str, object]) -> Rule:
    """Validate a rule alone (``{"any": [...]}``), or raise ``RuleError``.

    Paths start at ``rule``, as they would inside a definition body.
    """
    try:
        if isinstance(raw, bytes):
            return Rule.model_validate_json(raw)
        return Rule.model_validate(raw)
    except ValidationError as exc:
        raise _rule_error(exc, root="rule") from exc


def _rule_error(exc: ValidationError, root: str) -> RuleError:
    """One ``RuleError`` for the first problem pydantic found."""
    error = exc.errors(include_url=False)[0]
    path = root
    for part in error["loc"]:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else part
    part, message = _blame(error)
    if part:
        path = f"{path}.{part}" if path else part
    return RuleError(path, message)


def _blame(error: ErrorDetails) -> tuple[str, str]:
    """The part of a condition a ``_problem`` blamed, and the readable message."""
    context = error.get("ctx") or {}
    if error["type"] == "rule":
        return str(context["part"]), str(context["reason"])
    message = error["msg"]
    return "", message[:1].lower() + message[1:]
