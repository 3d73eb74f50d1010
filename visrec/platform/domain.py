"""Plain data passed between the servicer, the core and the adapters (no I/O, no protobuf)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

AttributeValue = str | float
FacetType = Literal["string", "number"]
# Fields every item has; catalog attributes (vendor, added_in, ...) are declared per index.
BUILTIN_STRING_FIELDS = ("category", "subcategory", "name")


@dataclass(frozen=True)
class Item:
    id: str
    name: str = ""
    category: str = ""
    subcategory: str = ""
    image_uri: str = ""
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)

    def value(self, field_name: str) -> AttributeValue | None:
        if field_name in BUILTIN_STRING_FIELDS:
            return str(getattr(self, field_name))
        return self.attributes.get(field_name)


@dataclass(frozen=True)
class ScoredItem:
    item: Item
    score: float
    vector: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Equals:
    field: str
    value: str


@dataclass(frozen=True)
class AnyOf:
    field: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Range:
    field: str
    min: float | None = None
    max: float | None = None


Condition = Equals | AnyOf | Range


@dataclass(frozen=True)
class IndexInfo:
    """An item collection and the model version whose embeddings fill it."""

    collection: str
    model_version: str
    dim: int
    facets: Mapping[str, FacetType] = field(default_factory=dict)
    count: int = 0

    def facet_type(self, field_name: str) -> FacetType | None:
        if field_name in BUILTIN_STRING_FIELDS:
            return "string"
        return self.facets.get(field_name)


@dataclass(frozen=True)
class Recommendations:
    items: list[ScoredItem]
    model_version: str
    request_id: str = ""
    experiment: str = ""
    arm: str = ""
    policy: str = ""
    degraded: str = ""


@dataclass(frozen=True)
class Interaction:
    """One acknowledged interaction, as kept in the event log."""

    event_id: str
    user_id: str
    item_id: str
    kind: str  # view | click | add_to_cart | purchase
    weight: float
    at: float  # epoch seconds
    experiment: str
    arm: str
    policy: str
    request_id: str
    model_version: str


@dataclass(frozen=True)
class InteractionResult:
    experiment: str
    arm: str
    counted: bool


@dataclass(frozen=True)
class CatalogChange:
    """The latest online change of one item: an upsert (with the item's fields; its image is
    kept beside) or a delete."""

    item_id: str
    op: Literal["upsert", "delete"]
    at: float
    item: Item | None = None


@dataclass(frozen=True)
class ItemUpsert:
    item: Item
    image: bytes


@dataclass(frozen=True)
class UpsertResult:
    upserted: int
    model_version: str
    indexes: tuple[str, ...] = ()


@dataclass(frozen=True)
class UserProfile:
    user_id: str
    vector: np.ndarray | None = field(default=None, compare=False)
    recent_items: tuple[str, ...] = ()  # most recent first
    counts: Mapping[str, int] = field(default_factory=dict)  # by interaction type
    recent_events: tuple[str, ...] = ()  # idempotency keys, most recent first
    interactions: int = 0
    updated_at: float = 0.0

    @property
    def seen(self) -> frozenset[str]:
        return frozenset(self.recent_items)
