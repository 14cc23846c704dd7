"""Validation of segment definitions (contract section 3): what parses, what is
refused, and where the refusal points."""

from __future__ import annotations

import json
from typing import Any

import pytest

from segments.errors import RuleError, SegmentError
from segments.rules import Condition, Rule, SegmentSpec, parse_rule, parse_spec
from signals.errors import ProfileStreamError

CONTRACT_EXAMPLE = b"""
{"name": "Clicked this week", "kind": "active",
 "rule": {"any": [{"all": [
   {"field": "signal.links_clicked_7d", "op": "gte", "value": 1},
   {"field": "attribute.city", "op": "is", "value": "Pune"}]}]}}
"""

VALID = {"field": "signal.links_clicked_7d", "op": "gte", "value": 1}


def spec(rule: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"name": "Test segment", "kind": "active", "rule": rule, **fields}


def one(condition: dict[str, Any]) -> dict[str, Any]:
    """A rule of one group holding one condition."""
    return {"any": [{"all": [condition]}]}


def placed(condition: dict[str, Any]) -> dict[str, Any]:
    """A rule with ``condition`` third in the second group, among valid ones."""
    return {"any": [{"all": [VALID]}, {"all": [VALID, VALID, condition, VALID]}]}


def cond(field: str, op: str, value: Any = None, **extra: Any) -> dict[str, Any]:
    condition: dict[str, Any] = {"field": field, "op": op, **extra}
    if value is not None:
        condition["value"] = value
    return condition


# --- what parses -----------------------------------------------------------


def test_contract_example_parses() -> None:
    parsed = parse_spec(CONTRACT_EXAMPLE)

    assert parsed.name == "Clicked this week"
    assert parsed.kind == "active"
    first, second = parsed.rule.any[0].all
    assert (first.field, first.op, first.value) == ("signal.links_clicked_7d", "gte", 1)
    assert (second.is_attribute, second.name) == (True, "city")


def test_bytes_and_decoded_bodies_parse_alike() -> None:
    assert parse_spec(json.loads(CONTRACT_EXAMPLE)) == parse_spec(CONTRACT_EXAMPLE)


def test_static_kind_parses() -> None:
    assert parse_spec(spec(one(VALID), kind="static")).kind == "static"


def test_a_dumped_spec_parses_back_unchanged() -> None:
    parsed = parse_spec(
        spec(one(cond("signal.last_link_clicked", "is_set")), name="Clicked ever")
    )

    assert parse_spec(parsed.model_dump(mode="json")) == parsed
    assert parse_spec(parsed.model_dump_json().encode()) == parsed


VALID_CONDITIONS = [
    pytest.param(cond(field, op, value), id=f"{field}-{op}")
    for field, op, value in [
        ("signal.last_link_clicked", "in_last", 7),
        ("signal.last_link_clicked", "in_last", 3650),
        ("signal.last_link_clicked", "not_in_last", 1),
        ("signal.contact_last_updated", "day_in_last", 366),
        ("signal.first_conversation_at", "day_in_this_month", None),
        ("signal.first_conversation_at", "day_in_month", 12),
        ("signal.last_inbound_call", "before", "2026-12-01"),
        ("signal.last_inbound_call", "after", "2028-02-29"),
        ("signal.last_inbound_call", "on", "2026-01-31"),
        ("signal.last_ctwa_message_at", "is_set", None),
        ("signal.first_business_reply_to_last_ctwa", "is_not_set", None),
        ("signal.campaigns_read_30d", "eq", 0),
        ("signal.campaigns_read_30d", "ne", -1),
        ("signal.campaigns_replied_90d", "gt", 2),
        ("signal.campaigns_replied_90d", "lt", 10),
        ("signal.links_clicked_90d", "lte", 3),
        ("signal.links_clicked_90d", "between", [2, 2]),
        ("signal.channel_type", "is", "whatsapp"),
        ("signal.channel_type", "is_not", ""),
        ("signal.channel_type", "in", ["sms", "whatsapp"]),
        ("signal.contact_source", "not_in", ["import"]),
        ("signal.last_template_used", "contains", "promo"),
        ("signal.last_template_type", "not_contains", "utility"),
        ("signal.last_ctwa_ad_source_url", "starts_with", "https://"),
        ("signal.contact_source", "is_set", None),
        ("signal.contact_source", "is_not_set", None),
        # Attributes take every operator of every type.
        ("attribute.birthday", "day_in_last", 7),
        ("attribute.birthday", "day_in_this_month", None),
        ("attribute.signup", "before", "2026-12-01"),
        ("attribute.age", "between", [18, 30]),
        ("attribute.age", "gte", 18),
        ("attribute.city", "in", ["Pune", "Mumbai"]),
        ("attribute.vip", "is_set", None),
        ("attribute." + "a" * 128, "is_not_set", None),
        ("attribute.name.with.dots", "is", "x"),
    ]
]


@pytest.mark.parametrize("condition", VALID_CONDITIONS)
def test_valid_condition_parses(condition: dict[str, Any]) -> None:
    parsed = parse_rule(one(condition)).any[0].all[0]

    assert parsed == Condition.model_validate(condition)


def test_null_value_counts_as_absent_for_operators_without_value() -> None:
    parsed = parse_rule(one({"field": "attribute.vip", "op": "is_set", "value": None}))

    assert parsed.any[0].all[0].value is None


def test_largest_rule_parses() -> None:
    group = {"all": [VALID] * 20}

    assert len(parse_rule({"any": [group] * 20}).any) == 20


# --- what is refused, and where it points ----------------------------------

AT = "rule.any[1].all[2]"

REFUSED_CONDITIONS = [
    # The field.
    ("prefix-unknown", cond("contact.city", "is", "x"), ".field", "'signal.<name>'"),
    ("prefix-missing", cond("links_clicked_7d", "gte", 1), ".field", "'signal."),
    ("signal-unknown", cond("signal.links_clicked_14d", "gte", 1), ".field", "14d"),
    ("signal-empty", cond("signal.", "is_set"), ".field", "unknown signal ''"),
    ("attribute-empty", cond("attribute.", "is_set"), ".field", "1 to 128"),
    ("attribute-129", cond("attribute." + "a" * 129, "is_set"), ".field", "128"),
    ("field-not-string", {"field": 3, "op": "is_set"}, ".field", "string"),
    # The operator.
    ("op-unknown", cond("signal.links_clicked_7d", "greater", 1), ".op", "'greater'"),
    ("op-unknown-attr", cond("attribute.x", "matches", "a"), ".op", "unknown"),
    ("op-case", cond("signal.links_clicked_7d", "GTE", 1), ".op", "'GTE'"),
    ("date-gte", cond("signal.last_link_clicked", "gte", 1), "", "date signal"),
    ("date-is", cond("signal.last_link_clicked", "is", "x"), "", "'is'"),
    ("count-is_set", cond("signal.links_clicked_7d", "is_set"), "", "count signal"),
    ("count-in_last", cond("signal.links_clicked_7d", "in_last", 7), "", "count"),
    ("string-in_last", cond("signal.channel_type", "in_last", 7), "", "string"),
    ("string-eq", cond("signal.channel_type", "eq", 1), "", "'eq'"),
    # Windows in days.
    ("in_last-0", cond("signal.last_link_clicked", "in_last", 0), ".value", "got 0"),
    ("in_last-3651", cond("attribute.d", "in_last", 3651), ".value", "3650"),
    ("in_last-string", cond("attribute.d", "in_last", "7"), ".value", 'got "7"'),
    ("in_last-float", cond("attribute.d", "in_last", 7.0), ".value", "got 7.0"),
    ("in_last-bool", cond("attribute.d", "in_last", True), ".value", "got true"),
    ("in_last-missing", cond("attribute.d", "in_last"), ".value", "got no value"),
    ("not_in_last-0", cond("attribute.d", "not_in_last", 0), ".value", "from 1"),
    ("day_in_last-367", cond("attribute.d", "day_in_last", 367), ".value", "366"),
    ("day_in_last-0", cond("attribute.d", "day_in_last", 0), ".value", "from 1"),
    ("day_in_month-0", cond("attribute.d", "day_in_month", 0), ".value", "1 to 12"),
    ("day_in_month-13", cond("attribute.d", "day_in_month", 13), ".value", "12"),
    ("day_in_month-bool", cond("attribute.d", "day_in_month", True), ".value", "t"),
    # Calendar dates.
    ("before-short", cond("attribute.d", "before", "2026-2-1"), ".value", "YYYY"),
    ("before-basic", cond("attribute.d", "before", "20260201"), ".value", "YYYY"),
    ("before-number", cond("attribute.d", "before", 20260201), ".value", "YYYY"),
    ("after-feb-30", cond("attribute.d", "after", "2026-02-30"), ".value", "02-30"),
    ("on-feb-29-common", cond("attribute.d", "on", "2025-02-29"), ".value", "02-29"),
    ("on-datetime", cond("attribute.d", "on", "2026-02-01T00:00Z"), ".value", "YYYY"),
    ("on-week-date", cond("attribute.d", "on", "2026-W05-1"), ".value", "YYYY"),
    # Integers and ranges.
    ("eq-float", cond("signal.links_clicked_7d", "eq", 1.5), ".value", "integer"),
    ("eq-string", cond("signal.links_clicked_7d", "eq", "1"), ".value", "integer"),
    ("gte-bool", cond("signal.links_clicked_7d", "gte", True), ".value", "true"),
    ("lt-missing", cond("signal.links_clicked_7d", "lt"), ".value", "no value"),
    ("between-reversed", cond("attribute.n", "between", [5, 1]), ".value", "min"),
    ("between-one", cond("attribute.n", "between", [1]), ".value", "[1]"),
    ("between-three", cond("attribute.n", "between", [1, 2, 3]), ".value", "two"),
    ("between-float", cond("attribute.n", "between", [1.0, 2]), ".value", "1.0"),
    ("between-bool", cond("attribute.n", "between", [True, 2]), ".value", "true"),
    ("between-text", cond("attribute.n", "between", "1-2"), ".value", "min"),
    # Strings and lists of strings.
    ("is-number", cond("signal.channel_type", "is", 5), ".value", "a string"),
    ("is-missing", cond("attribute.city", "is"), ".value", "a string"),
    ("contains-list", cond("attribute.city", "contains", ["a"]), ".value", "str"),
    ("in-empty", cond("signal.channel_type", "in", []), ".value", "non-empty"),
    ("in-number", cond("signal.channel_type", "in", [1]), ".value", "strings"),
    ("in-mixed", cond("attribute.city", "not_in", ["a", 2]), ".value", "strings"),
    ("in-string", cond("attribute.city", "in", "Pune"), ".value", "list"),
    # Values where none is taken.
    ("is_set-value", cond("signal.channel_type", "is_set", "x"), ".value", "no val"),
    ("is_set-false", cond("attribute.vip", "is_set", False), ".value", "false"),
    ("is_not_set-0", cond("attribute.vip", "is_not_set", 0), ".value", "got 0"),
    ("this_month-3", cond("attribute.d", "day_in_this_month", 3), ".value", "3"),
    # Shape.
    ("key-unknown", cond("attribute.a", "is", "x", values=["x"]), ".values", "extra"),
    ("op-missing", {"field": "attribute.a", "value": 1}, ".op", "required"),
    ("field-missing", {"op": "is_set"}, ".field", "required"),
    ("not-an-object", ["signal.links_clicked_7d", "gte", 1], "", "valid dict"),
]


@pytest.mark.parametrize(
    ("condition", "where", "fragment"),
    [pytest.param(c, w, f, id=name) for name, c, w, f in REFUSED_CONDITIONS],
)
def test_refused_condition_points_at_it(
    condition: dict[str, Any], where: str, fragment: str
) -> None:
    with pytest.raises(RuleError) as caught:
        parse_rule(placed(condition))

    assert caught.value.path == AT + where
    assert fragment in caught.value.message
    assert str(caught.value) == f"{AT}{where}: {caught.value.message}"


@pytest.mark.parametrize(
    ("rule", "path", "fragment"),
    [
        pytest.param({"any": []}, "rule.any", "at least 1", id="no-groups"),
        pytest.param({"any": [{"all": []}]}, "rule.any[0].all", "at least", id="empty"),
        pytest.param(
            {"any": [{"all": [VALID]}] * 21}, "rule.any", "20", id="21-groups"
        ),
        pytest.param(one(VALID) | {"all": []}, "rule.all", "extra", id="rule-key"),
        pytest.param(
            {"any": [{"all": [VALID] * 21}]}, "rule.any[0].all", "20", id="21"
        ),
        pytest.param(
            {"any": [{"all": [VALID], "x": 1}]}, "rule.any[0].x", "ex", id="gk"
        ),
        pytest.param({"any": [{}]}, "rule.any[0].all", "required", id="group-empty"),
        pytest.param({"any": {"all": [VALID]}}, "rule.any", "list", id="any-object"),
        pytest.param({}, "rule.any", "required", id="rule-empty"),
    ],
)
def test_refused_rule_shape_points_at_it(
    rule: dict[str, Any], path: str, fragment: str
) -> None:
    with pytest.raises(RuleError) as caught:
        parse_rule(rule)

    assert caught.value.path == path
    assert fragment in caught.value.message


@pytest.mark.parametrize(
    ("body", "path", "fragment"),
    [
        pytest.param(spec(one(VALID), name=""), "name", "at least 1", id="name-empty"),
        pytest.param(spec(one(VALID), name="n" * 201), "name", "200", id="name-201"),
        pytest.param(spec(one(VALID), name=7), "name", "string", id="name-number"),
        pytest.param(spec(one(VALID), kind="dynamic"), "kind", "active", id="kind"),
        pytest.param(spec(one(VALID), id="s1"), "id", "extra", id="unknown-key"),
        pytest.param({"name": "n", "kind": "active"}, "rule", "required", id="no-rule"),
        pytest.param(
            spec(placed(cond("x", "is_set"))), AT + ".field", "a field", id="deep"
        ),
        pytest.param(b"{", "", "invalid JSON", id="bad-json"),
        pytest.param(b"[]", "", "object", id="json-array"),
        pytest.param(b'{"name": "n", "kind": "active"', "", "JSON", id="truncated"),
    ],
)
def test_refused_spec_points_at_it(
    body: dict[str, Any] | bytes, path: str, fragment: str
) -> None:
    with pytest.raises(RuleError) as caught:
        parse_spec(body)

    assert caught.value.path == path
    assert fragment in caught.value.message


def test_first_problem_is_reported() -> None:
    rule = {
        "any": [
            {"all": [VALID, cond("signal.nope", "is_set")]},
            {"all": [cond("attribute.a", "in_last", 0)]},
        ]
    }

    with pytest.raises(RuleError, match=r"^rule\.any\[0\]\.all\[1\]\.field: "):
        parse_rule(rule)


def test_message_reads_like_the_contract_wants() -> None:
    rule = {"any": [{"all": [VALID, cond("signal.last_link_clicked", "gte", 1)]}]}

    with pytest.raises(RuleError) as caught:
        parse_rule(rule)

    assert str(caught.value) == (
        "rule.any[0].all[1]: operator 'gte' is not valid for date signal "
        "'last_link_clicked'"
    )


def test_rule_error_is_a_segment_error_that_no_retry_fixes() -> None:
    with pytest.raises(RuleError) as caught:
        parse_rule(one(cond("signal.nope", "is_set")))

    assert isinstance(caught.value, SegmentError)
    assert isinstance(caught.value, ProfileStreamError)
    assert caught.value.retriable is False
    assert caught.value.__cause__ is not None


def test_braces_in_a_field_name_are_quoted_not_interpreted() -> None:
    with pytest.raises(RuleError) as caught:
        parse_rule(one(cond("signal.{reason}", "is_set")))

    assert caught.value.message == "unknown signal '{reason}'"


def test_models_refuse_invalid_conditions_when_built_directly() -> None:
    with pytest.raises(ValueError, match="not valid for count signal"):
        Condition(field="signal.links_clicked_7d", op="is_set")


def test_models_are_immutable() -> None:
    parsed: SegmentSpec = parse_spec(CONTRACT_EXAMPLE)
    rule: Rule = parsed.rule

    with pytest.raises(ValueError, match="frozen"):
        rule.any = []  # type: ignore[misc]  # mypy knows it too
