"""Validation of structured filters against the active index's declared fields (pure)."""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterable

from visrec.platform.domain import AnyOf, Condition, Equals, IndexInfo, Range
from visrec.platform.errors import InvalidArgument

MAX_CONDITIONS = 16
MAX_VALUES = 256
MAX_VALUE_LENGTH = 512


def _check_text(field: str, value: str) -> None:
    if len(value) > MAX_VALUE_LENGTH:
        raise InvalidArgument(
            f"filter value for {field!r} is {len(value)} characters long; the limit is "
            f"{MAX_VALUE_LENGTH}"
        )
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
        raise InvalidArgument(f"filter value for {field!r} contains control characters")


def validate(conditions: Iterable[Condition], index: IndexInfo) -> tuple[Condition, ...]:
    """Reject unknown fields, type mismatches and malformed values with a message naming them."""
    out = tuple(conditions)
    if len(out) > MAX_CONDITIONS:
        raise InvalidArgument(f"a filter may hold at most {MAX_CONDITIONS} conditions")
    known = sorted({"category", "subcategory", "name", *index.facets})
    for cond in out:
        kind = index.facet_type(cond.field)
        if kind is None:
            raise InvalidArgument(
                f"unknown filter field {cond.field!r}; filterable fields: {', '.join(known)}"
            )
        if isinstance(cond, Range):
            if kind != "number":
                raise InvalidArgument(f"range filter on {cond.field!r}, which is not numeric")
            if cond.min is None and cond.max is None:
                raise InvalidArgument(f"range filter on {cond.field!r} has neither min nor max")
            for bound in (cond.min, cond.max):
                if bound is not None and not math.isfinite(bound):
                    raise InvalidArgument(f"range bounds on {cond.field!r} must be finite numbers")
            if cond.min is not None and cond.max is not None and cond.min > cond.max:
                raise InvalidArgument(f"range filter on {cond.field!r} has min > max")
            continue
        if kind != "string":
            raise InvalidArgument(
                f"{cond.field!r} is numeric: filter it with a range, not a string test"
            )
        if isinstance(cond, Equals):
            _check_text(cond.field, cond.value)
        elif isinstance(cond, AnyOf):
            if not cond.values:
                raise InvalidArgument(f"any_of filter on {cond.field!r} has no values")
            if len(cond.values) > MAX_VALUES:
                raise InvalidArgument(
                    f"any_of filter on {cond.field!r} has {len(cond.values)} values; the limit is "
                    f"{MAX_VALUES}"
                )
            for v in cond.values:
                _check_text(cond.field, v)
    return out


def matches(item_value: object, cond: Condition) -> bool:
    """Reference semantics of a condition (used by the in-memory store and tests)."""
    if isinstance(cond, Equals):
        return item_value == cond.value
    if isinstance(cond, AnyOf):
        return item_value in cond.values
    if not isinstance(item_value, int | float) or isinstance(item_value, bool):
        return False
    return (cond.min is None or item_value >= cond.min) and (
        cond.max is None or item_value <= cond.max
    )
