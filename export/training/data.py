"""What a head learns from: the item vectors of a served version and positive pairs, from the
interaction log (two items one user interacted with) and from catalog groups (two pictures of one
product), with everything held out for ``visrec-evaluate`` removed before training sees it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from visrec.export.errors import ExportError
from visrec.export.ports import Database
from visrec.export.training.holdout import CatalogGroups, held_out, items_by_user
from visrec.platform.milvus.schema import items_collection


def positive_pairs(baskets: Iterable[Sequence[int]], max_items: int) -> np.ndarray:
    """Every ordered pair of distinct items within one basket (a user's most recent
    ``max_items`` items, or one label's items): shape [n, 2]."""
    out = []
    for basket in baskets:
        items = list(dict.fromkeys(basket))[-max_items:]
        if len(items) < 2:
            continue
        a, b = np.meshgrid(items, items, indexing="ij")
        keep = a != b
        out.append(np.stack([a[keep], b[keep]], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 2), dtype=np.int64)


@dataclass(frozen=True)
class TrainingData:
    ids: list[str]
    features: np.ndarray
    pairs: np.ndarray
    users: int
    events: int
    version: str


def load_training_data(db: Database, version: str | None, percent: float, salt: str,
                       max_items: int, user_prefix: str = "") -> TrainingData:
    """Item vectors of ``items_v<version>`` and pairs from the log of the users that are not
    held out (and whose ids start with ``user_prefix``): a held-out user's items never reach a
    pair."""
    if version is None:
        active = db.admin.active_index()
        if active is None:
            raise ExportError("no index is served yet: ingest a catalog first")
        version = active.model_version
    collection = items_collection(version)
    if not db.admin.has_collection(collection):
        raise ExportError(f"no collection {collection}: nothing was embedded with version "
                          f"{version}")
    ids, features = db.admin.item_vectors(collection)
    index_of = {item: n for n, item in enumerate(ids)}
    events = [e for e in db.store.interactions() if e.user_id.startswith(user_prefix)]
    baskets = {u: [index_of[i] for i in items if i in index_of]
               for u, items in items_by_user(events).items() if not held_out(u, percent, salt)}
    pairs = positive_pairs(baskets.values(), max_items)
    return TrainingData(ids, features, pairs, len(baskets), len(events), version)


def group_baskets(groups: CatalogGroups, index_of: Mapping[str, int]) -> list[list[int]]:
    """Items of one catalog group (the same product in other pictures), as baskets of
    positives."""
    baskets: dict[str, list[int]] = {}
    for item, group in groups.group_of.items():
        if item in index_of:
            baskets.setdefault(group, []).append(index_of[item])
    return [b for b in baskets.values() if len(b) > 1]


def without_items(data: TrainingData, drop: Iterable[str]) -> TrainingData:
    """``data`` with the ``drop`` items gone: no feature row, no pair that touches one."""
    dropped = set(drop)
    keep = [n for n, item in enumerate(data.ids) if item not in dropped]
    remap = np.full(len(data.ids), -1, dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    pairs = remap[data.pairs] if len(data.pairs) else data.pairs.reshape(0, 2)
    pairs = pairs[(pairs >= 0).all(axis=1)]
    return replace(data, ids=[data.ids[n] for n in keep], features=data.features[keep],
                   pairs=pairs)


def with_groups(data: TrainingData, groups: CatalogGroups, percent: float, salt: str,
                max_items: int) -> tuple[TrainingData, np.ndarray, int]:
    """The items of held-out groups removed (no feature, no interaction pair: evaluation groups
    are never seen), and the positive pairs of the other groups; also how many groups are out."""
    held = {i for i in data.ids if groups.held_out(i, percent, salt)}
    data = without_items(data, held)
    index_of = {item: n for n, item in enumerate(data.ids)}
    grouped = positive_pairs(group_baskets(groups, index_of), max_items)
    if len(grouped) == 0:
        raise ExportError(f"no two items outside the hold-out share a {groups.field!r}")
    return data, grouped, len({groups.group_of[i] for i in held})
