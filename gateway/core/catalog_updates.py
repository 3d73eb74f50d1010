"""UpsertItems and DeleteItems: online catalog changes, applied whole or not at all.

A stream is read and checked entirely before anything is written: every item valid, every image
embedded (by the active model version, and by the version of any index a rollout is building);
one bad item refuses the whole stream, naming it. Then the change is made durable (the change
log, with the images, from which ingest and rollouts rebuild) and written into every index that
is live or being built. Deleting removes items from those indexes and from this replica's cached
fallback list (other replicas refresh theirs within VISREC_POPULAR_REFRESH_S).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import numpy as np

from visrec.gateway.core.active_index import ActiveIndex
from visrec.gateway.core.checks import Limits, check_id
from visrec.gateway.core.images import ImageLimits, check_image
from visrec.gateway.core.observer import Observer, Stages
from visrec.gateway.core.popular import PopularItems
from visrec.platform.catalog import item_problem, online_fingerprint
from visrec.platform.domain import CatalogChange, IndexInfo, Item, ItemUpsert, UpsertResult
from visrec.platform.errors import FailedPrecondition, InvalidArgument, VersionNotServed
from visrec.platform.ports import CatalogEditor, ChangeLog, Embedder, VectorStore

BATCH = 32  # images per Triton request
log = logging.getLogger(__name__)


class CatalogUpdates:
    def __init__(self, embedder: Embedder, store: VectorStore, editor: CatalogEditor,
                 changes: ChangeLog, index: ActiveIndex, limits: Limits,
                 popular: PopularItems, stages: Stages, observer: Observer,
                 clock: Callable[[], float]) -> None:
        self._embedder = embedder
        self._store = store
        self._editor = editor
        self._changes = changes
        self._index = index
        self._limits = limits
        self._popular = popular
        self._stage = stages
        self._observer = observer
        self._clock = clock

    async def _targets(self) -> list[IndexInfo]:
        """The live index, then every index a rollout is building."""
        active = await self._index.current()
        building = await self._store.building_indexes()
        return [active, *(b for b in building if b.collection != active.collection)]

    async def _image_limits(self, version: str) -> ImageLimits:
        params = await self._embedder.image_limits(version)
        if params is None:
            return ImageLimits(max_pixels=self._limits.max_image_pixels)
        return ImageLimits.from_parameters(params, self._limits.max_image_pixels)

    async def _embed(self, items: Sequence[ItemUpsert], target: IndexInfo) -> np.ndarray:
        """Every image by ``target``'s model version, in batches; an image Triton cannot
        decode refuses the stream, naming the item."""
        out = []
        for start in range(0, len(items), BATCH):
            batch = items[start:start + BATCH]
            try:
                out.append(await self._embedder.embed([u.image for u in batch],
                                                       model_version=target.model_version))
            except InvalidArgument:
                for n, u in enumerate(batch, start):  # find the culprit
                    try:
                        await self._embedder.embed([u.image], model_version=target.model_version)
                    except InvalidArgument as e:
                        raise InvalidArgument(f"item #{n} ({u.item.id!r}): {e}") from e
                raise
        vectors = np.concatenate(out)
        if vectors.shape != (len(items), target.dim):
            raise FailedPrecondition(f"the image model returned {vectors.shape}, index "
                                     f"{target.collection} holds {target.dim}-d vectors")
        return vectors

    async def _embed_for(self, items: Sequence[ItemUpsert], targets: Sequence[IndexInfo],
                         vectors: dict[str, np.ndarray]) -> list[IndexInfo]:
        """Embed for each target not embedded for yet; the targets that can be written. An
        index being built whose model version cannot embed now (a rollout killed and its
        version unloaded) is skipped: a rollout applies every logged change before it switches."""
        kept = []
        for n, t in enumerate(targets):
            if t.collection not in vectors:
                try:
                    with self._stage("embed"):
                        vectors[t.collection] = await self._embed(items, t)
                except (FailedPrecondition, VersionNotServed) as e:
                    if n == 0:
                        raise
                    log.warning("not writing into %s (being built): %s", t.collection, e)
                    continue
            kept.append(t)
        return kept

    async def upsert(self, items: Sequence[ItemUpsert]) -> UpsertResult:
        if not items:
            raise InvalidArgument("the stream holds no item")
        if len(items) > self._limits.max_batch_items:
            raise InvalidArgument(f"at most {self._limits.max_batch_items} items per stream, "
                                  f"got {len(items)}")
        targets = await self._targets()
        facets = targets[0].facets
        limits = {t.model_version: await self._image_limits(t.model_version) for t in targets}
        seen: set[str] = set()
        with self._stage("decode"):
            for n, u in enumerate(items):
                it = u.item
                problem = item_problem(it.id, {"name": it.name, "category": it.category,
                                               "subcategory": it.subcategory,
                                               "image_uri": it.image_uri},
                                       it.attributes, facets)
                if problem is None and len(it.id) > self._limits.max_id_length:
                    problem = (f"its id is {len(it.id)} characters long; the limit is "
                               f"{self._limits.max_id_length}")
                if problem is None:
                    problem = self._editor.id_problem(it.id)
                if problem is None and it.id in seen:
                    problem = "its id appears twice in the stream"
                if problem is not None:
                    raise InvalidArgument(f"item #{n} ({it.id!r}): {problem}")
                seen.add(it.id)
                for limit in limits.values():
                    try:
                        check_image(u.image, max_bytes=self._limits.max_image_bytes,
                                    limits=limit)
                    except InvalidArgument as e:
                        raise InvalidArgument(f"item #{n} ({it.id!r}): {e}") from e
        vectors: dict[str, np.ndarray] = {}
        targets = await self._embed_for(items, targets, vectors)
        now = self._clock()
        with self._stage("write"):
            await self._changes.record(
                [CatalogChange(u.item.id, "upsert", now, u.item) for u in items],
                {u.item.id: u.image for u in items})
        # Read the targets again now the change is durable: a rollout that started building an
        # index since either is listed now or will replay this change (it replays what it finds
        # in the log after it lists its index as building).
        targets = await self._embed_for(items, await self._targets(), vectors)
        with self._stage("write"):
            await asyncio.gather(*(self._editor.put_items(
                t.collection, list(zip([u.item for u in items], vectors[t.collection],
                                       strict=True)), online_fingerprint(now))
                for t in targets))
        self._observer.catalog_change("upsert", len(items))
        return UpsertResult(len(items), targets[0].model_version,
                            tuple(t.collection for t in targets))

    async def delete(self, ids: Sequence[str]) -> int:
        """Remove the items from every live or building index; the number the live one had."""
        if not ids:
            raise InvalidArgument("item_ids is empty")
        if len(ids) > self._limits.max_batch_items:
            raise InvalidArgument(f"at most {self._limits.max_batch_items} items per call, "
                                  f"got {len(ids)}")
        for n, item_id in enumerate(ids):
            try:
                check_id("item_id", item_id, self._limits.max_id_length)
            except InvalidArgument as e:
                raise InvalidArgument(f"item #{n}: {e}") from e
            problem = self._editor.id_problem(item_id)
            if problem is not None:
                raise InvalidArgument(f"item #{n} ({item_id!r}): {problem}")
        unique = list(dict.fromkeys(ids))
        now = self._clock()
        with self._stage("write"):
            await self._changes.record([CatalogChange(i, "delete", now) for i in unique])
            targets = await self._targets()  # after the record: see upsert
            removed = await asyncio.gather(*(self._editor.remove_items(t.collection, unique)
                                             for t in targets))
        self._popular.forget(unique)
        self._observer.catalog_change("delete", len(removed[0]))
        return len(removed[0])


__all__ = ["CatalogUpdates", "Item", "ItemUpsert"]
