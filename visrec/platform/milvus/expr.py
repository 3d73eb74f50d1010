"""Validated filter conditions -> a Milvus boolean expression, with every value escaped.

Field names never come from the caller verbatim: built-in fields map to columns, catalog
attributes to keys of the ``attributes`` JSON column, and attribute names were checked against
ATTRIBUTE_NAME when the catalog was ingested. String values are written as JSON string literals
(quotes and backslashes escaped), which Milvus's expression parser reads back as the same string,
so no value can close the literal and inject an operator. Milvus Lite has no filter templating,
hence escaping rather than bound parameters.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from visrec.platform.catalog import ATTRIBUTE_NAME
from visrec.platform.domain import BUILTIN_STRING_FIELDS, AnyOf, Condition, Equals


def quote(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def column(field: str) -> str:
    if field in BUILTIN_STRING_FIELDS:
        return field
    if not ATTRIBUTE_NAME.match(field):
        raise ValueError(f"not a valid attribute name: {field!r}")
    return f'attributes["{field}"]'


def _number(x: float) -> str:
    return repr(float(x))


def compile_condition(cond: Condition) -> str:
    col = column(cond.field)
    if isinstance(cond, Equals):
        return f"{col} == {quote(cond.value)}"
    if isinstance(cond, AnyOf):
        return f"{col} in [{', '.join(quote(v) for v in cond.values)}]"
    parts = []
    if cond.min is not None:
        parts.append(f"{col} >= {_number(cond.min)}")
    if cond.max is not None:
        parts.append(f"{col} <= {_number(cond.max)}")
    return " and ".join(parts)


def compile_filter(conditions: Iterable[Condition]) -> str:
    """'' for no conditions, else the conjunction of each condition in parentheses."""
    return " and ".join(f"({compile_condition(c)})" for c in conditions)
