"""What a catalog item may hold (pure): attribute names and types, and the facets (filterable
attribute types) of an index. Batch ingest and the gateway's online catalog changes check items
with the same rules, so neither can write what the other (or the filter compiler) refuses."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from visrec.gateway.core.domain import BUILTIN_STRING_FIELDS, AttributeValue, FacetType

# Attribute names become keys of a JSON column in filter expressions: identifiers only.
ATTRIBUTE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
# Keys a catalog line may not use as attributes: the item's own fields.
RESERVED = frozenset({"id", "image", "image_uri", "vector", "attributes", *BUILTIN_STRING_FIELDS})
MAX_ID_LENGTH = 256


def attribute_problem(key: str, value: object) -> str | None:
    """Why ``key: value`` cannot be a catalog attribute, or None when it can."""
    if key in RESERVED:
        return f"{key!r} is a reserved field, not an attribute"
    if not ATTRIBUTE_NAME.match(key) or key.startswith("_"):
        return (f"attribute name {key!r} is not an identifier (or starts with _, which is "
                "reserved)")
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        return f"attribute {key!r} must be a string or a number"
    return None


def facet_kind(value: object) -> FacetType:
    return "number" if isinstance(value, int | float) and not isinstance(value, bool) \
        else "string"


def infer_facets(rows: Iterable[Mapping[str, object]]) -> dict[str, FacetType]:
    """Attribute name -> 'string' | 'number' from catalog rows (booleans count as strings;
    an attribute seen with both kinds is a string)."""
    kinds: dict[str, set[str]] = {}
    for row in rows:
        for key, value in row.items():
            kinds.setdefault(key, set()).add(facet_kind(value))
    return {k: ("number" if v == {"number"} else "string") for k, v in kinds.items()}


def coerce(attributes: Mapping[str, AttributeValue],
           facets: Mapping[str, FacetType]) -> dict[str, AttributeValue]:
    """Attributes with the values of string facets as strings (a mixed attribute's numbers)."""
    return {k: (str(v) if facets.get(k) == "string" else v) for k, v in attributes.items()}
