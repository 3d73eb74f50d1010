"""The one split between training and evaluation: a salted hash of the user id puts a share of
users in the hold-out, and the same hash of a catalog group (``--group-by``) a share of groups,
which ``visrec-train`` never reads and ``visrec-evaluate`` scores on. Both import it from here, so
they cannot disagree."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from visrec.platform.domain import Interaction
from visrec.platform.errors import VisrecError

DEFAULT_SALT = "visrec-holdout"


def held_out(user_id: str, percent: float, salt: str = DEFAULT_SALT) -> bool:
    """Whether a user is in the evaluation split: a stable, stateless hash bucket in [0, 100)."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10000 < percent * 100


def items_by_user(events: Iterable[Interaction]) -> dict[str, list[str]]:
    """Each user's distinct items, in the order of their first interaction."""
    out: dict[str, dict[str, None]] = defaultdict(dict)
    for e in sorted(events, key=lambda e: (e.at, e.event_id)):
        out[e.user_id].setdefault(e.item_id, None)
    return {u: list(items) for u, items in out.items()}


@dataclass(frozen=True)
class Case:
    user_id: str
    history: tuple[str, ...]
    targets: frozenset[str]


def cases(events: Iterable[Interaction], percent: float, salt: str = DEFAULT_SALT,
          known: frozenset[str] | None = None) -> list[Case]:
    """Held-out users with >= 2 distinct (known) items: first half history, the rest targets."""
    out = []
    for user, items in sorted(items_by_user(events).items()):
        if not held_out(user, percent, salt):
            continue
        items = [i for i in items if known is None or i in known]
        if len(items) < 2:
            continue
        half = len(items) // 2
        out.append(Case(user, tuple(items[:half]), frozenset(items[half:])))
    return out


@dataclass(frozen=True)
class CatalogGroups:
    """Which catalog items show the same product (``group``: ``unified`` in the demo, a product
    id in a shop) and where each picture comes from (``source``: the demo's ``vendor``)."""
    field: str
    group_of: Mapping[str, str]
    source_of: Mapping[str, str]

    def held_out(self, item_id: str, percent: float, salt: str = DEFAULT_SALT) -> bool:
        """Whether the item's group is in the evaluation split (groups split like users, by a
        salted hash, so every picture of one product falls on the same side)."""
        group = self.group_of.get(item_id)
        return group is not None and held_out(f"{self.field}={group}", percent, salt)


def catalog_groups(catalog: Path, field: str, source_field: str | None = None) -> CatalogGroups:
    """The groups (and sources) of a catalog file's items; items without ``field`` are in none."""
    if not catalog.is_file():
        raise VisrecError(f"catalog {catalog} not found (needed to group items by {field!r})")
    group_of: dict[str, str] = {}
    source_of: dict[str, str] = {}
    try:
        lines = catalog.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise VisrecError(f"catalog {catalog}: {e}") from e
    for lineno, line in enumerate(lines, start=1):
        try:
            row = json.loads(line) if line.strip() else None
        except json.JSONDecodeError as e:
            raise VisrecError(f"{catalog}:{lineno}: not JSON: {e}") from e
        if not isinstance(row, dict) or not isinstance(row.get("id"), str):
            continue
        if row.get(field) not in (None, ""):
            group_of[row["id"]] = str(row[field])
        if source_field and row.get(source_field) not in (None, ""):
            source_of[row["id"]] = str(row[source_field])
    if not group_of:
        raise VisrecError(f"no item of {catalog} has the field {field!r}")
    if source_field and not source_of:
        raise VisrecError(f"no item of {catalog} has the field {source_field!r}")
    return CatalogGroups(field, group_of, source_of)
