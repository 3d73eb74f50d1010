import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from visrec.gateway.core.filters import MAX_CONDITIONS, validate
from visrec.platform.domain import AnyOf, Equals, IndexInfo, Range
from visrec.platform.errors import InvalidArgument
from visrec.platform.milvus.expr import compile_filter, quote

INDEX = IndexInfo("items_v1", "1", 4, {"vendor": "string", "added_in": "number"})


def test_compiles_builtin_fields_to_columns_and_attributes_to_json_keys():
    expr = compile_filter([AnyOf("category", ("Flags", "Food & Drink")),
                           Equals("vendor", "google"), Range("added_in", 1.0, 13.5)])
    assert expr == ('(category in ["Flags", "Food & Drink"]) and '
                    '(attributes["vendor"] == "google") and '
                    '(attributes["added_in"] >= 1.0 and attributes["added_in"] <= 13.5)')


def test_open_range_compiles_one_bound():
    assert compile_filter([Range("added_in", max=2.0)]) == '(attributes["added_in"] <= 2.0)'


def test_no_conditions_compile_to_empty_expression():
    assert compile_filter([]) == ""


@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), max_size=64))
def test_quoted_value_is_one_literal_that_reads_back_as_the_value(value):
    literal = quote(value)
    assert json.loads(literal) == value
    # Every double quote inside the literal is escaped, so it cannot end the literal early.
    body = literal[1:-1]
    i = 0
    while i < len(body):
        if body[i] == "\\":
            i += 2
            continue
        assert body[i] != '"'
        i += 1


def test_injection_attempt_stays_inside_the_literal():
    expr = compile_filter([Equals("vendor", 'x" or id != "')])
    assert expr == '(attributes["vendor"] == "x\\" or id != \\"")'


@pytest.mark.parametrize("cond, message", [
    (Equals("colour", "red"), "unknown filter field 'colour'"),
    (Equals("added_in", "13"), "numeric: filter it with a range"),
    (Range("vendor", 1, 2), "not numeric"),
    (Range("added_in"), "neither min nor max"),
    (Range("added_in", 3, 1), "min > max"),
    (Range("added_in", math.nan, 1), "finite"),
    (Range("added_in", None, math.inf), "finite"),
    (AnyOf("category", ()), "no values"),
    (AnyOf("category", tuple(str(i) for i in range(300))), "limit is 256"),
    (Equals("vendor", "a\x00b"), "control characters"),
    (Equals("vendor", "x" * 600), "limit is 512"),
])
def test_invalid_conditions_are_refused_with_a_reason(cond, message):
    with pytest.raises(InvalidArgument, match=message):
        validate([cond], INDEX)


def test_too_many_conditions():
    with pytest.raises(InvalidArgument, match=f"at most {MAX_CONDITIONS}"):
        validate([Equals("vendor", "a")] * (MAX_CONDITIONS + 1), INDEX)


def test_valid_conditions_pass_unchanged():
    conds = [Equals("vendor", 'it\'s "quoted" \\ and in [a, b]'), Range("added_in", min=2)]
    assert validate(conds, INDEX) == tuple(conds)
