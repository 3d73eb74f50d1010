"""What a catalog item may hold (pure): attribute names and types, and the facets (filterable
attribute types) of an index. Batch ingest and the gateway's online catalog changes check items
with the same rules, so neither can write what the other (or the filter compiler) refuses."""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Mapping

from visrec.platform.domain import BUILTIN_STRING_FIELDS, AttributeValue, FacetType

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
    if isinstance(value, float) and not math.isfinite(value):
        return f"attribute {key!r} must be a finite number"
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


# Longest value of each of an item's own fields (the items collection's VARCHAR sizes).
FIELD_LENGTHS = {"name": 1024, "category": 256, "subcategory": 256, "image_uri": 2048}


def item_problem(item_id: str, fields: Mapping[str, str],
                 attributes: Mapping[str, object],
                 facets: Mapping[str, FacetType]) -> str | None:
    """Why an item sent online cannot enter an index declaring ``facets``, or None. Its
    attributes must be ones the catalog declares, with the declared type: an index's filters
    know only those."""
    if not item_id:
        return "its id is empty"
    if len(item_id) > MAX_ID_LENGTH:
        return f"its id is {len(item_id)} characters long; the limit is {MAX_ID_LENGTH}"
    named: dict[str, str] = {"id": item_id, **fields}
    for name, value in named.items():
        if len(value) > FIELD_LENGTHS.get(name, MAX_ID_LENGTH):
            return f"its {name} is longer than {FIELD_LENGTHS.get(name, MAX_ID_LENGTH)} characters"
        if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
            return f"its {name} contains control characters"
    for key, attr in attributes.items():
        problem = attribute_problem(key, attr)
        if problem:
            return problem
        if isinstance(attr, str) and any(unicodedata.category(ch) in ("Cc", "Cs")
                                         for ch in attr):
            return f"attribute {key!r} contains control characters"
        if key not in facets:
            declared = ", ".join(sorted(facets)) or "none"
            return (f"attribute {key!r} is not one the catalog declares (declared: "
                    f"{declared})")
        if facet_kind(attr) != facets[key]:
            return f"attribute {key!r} must be a {facets[key]}, as the catalog declares it"
    return None


ONLINE = "online:"


def online_fingerprint(at: float) -> str:
    """The fingerprint an item written by an online change carries in an index: the time of the
    change, so a rollout's catch-up sees which indexes already hold it."""
    return f"{ONLINE}{at!r}"
