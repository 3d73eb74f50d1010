"""The online catalog changes (UpsertItems, DeleteItems): the latest change of each item and the
images of upserted items, durable in Milvus, so that a batch ingest or a rollout that re-embeds
the catalog applies them too (an item upserted online exists in no catalog file)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from visrec.platform.domain import CatalogChange
from visrec.platform.milvus import schema
from visrec.platform.milvus.connection import MilvusConnection
from visrec.platform.milvus.expr import quote
from visrec.platform.milvus.serving import in_ids


class MilvusCatalogChanges:
    def __init__(self, db: MilvusConnection) -> None:
        self._db = db

    def _ensure(self, c: Any) -> None:
        self._db.ensure(c, schema.CHANGES_COLLECTION,
                        lambda c: schema.create_changes(c, self._db.timeout))
        self._db.ensure(c, schema.IMAGES_COLLECTION,
                        lambda c: schema.create_images(c, self._db.timeout))

    async def prepare(self) -> None:
        """Create the collections (ingest does, with the jobs' longer deadline: creating and
        loading two collections can take a Milvus server longer than a gateway call's)."""
        await self._db.run(self._ensure)

    async def record(self, changes: Sequence[CatalogChange],
                     images: Mapping[str, bytes] | None = None) -> None:
        """Store each change (replacing the item's previous one) and the upserted images;
        a delete drops the item's image."""
        images = images or {}

        def call(c: Any) -> None:
            self._ensure(c)
            ids = [ch.item_id for ch in changes]
            if ids:  # an image may have fewer chunks than the one it replaces
                c.delete(schema.IMAGES_COLLECTION, filter=in_ids(ids, "item_id"),
                         timeout=self._db.timeout)
            rows, change_rows = [], []
            for ch in changes:
                chunks = schema.image_rows(ch.item_id, images[ch.item_id]) \
                    if ch.op == "upsert" else []
                rows += chunks
                change_rows.append(schema.change_row(ch, len(chunks)))
            for start in range(0, len(rows), 64):
                c.upsert(schema.IMAGES_COLLECTION, rows[start:start + 64],
                         timeout=self._db.timeout)
            if change_rows:
                c.upsert(schema.CHANGES_COLLECTION, change_rows, timeout=self._db.timeout)

        await self._db.run(call)

    async def since(self, at: float) -> list[CatalogChange]:
        """Every change recorded at or after ``at``, oldest first."""
        def call(c: Any) -> list[CatalogChange]:
            if not self._db.exists(c, schema.CHANGES_COLLECTION):
                return []
            self._ensure(c)
            rows = self._db.scan(c, schema.CHANGES_COLLECTION, ["id", "op", "at", "item"],
                                 expr=f"at >= {float(at)!r}")
            return sorted((schema.change_from_row(r) for r in rows), key=lambda ch: ch.at)

        return await self._db.run(call)

    async def image(self, item_id: str) -> bytes | None:
        def call(c: Any) -> list[dict[str, Any]]:
            if not self._db.exists(c, schema.IMAGES_COLLECTION):
                return []
            self._ensure(c)
            rows: list[dict[str, Any]] = c.query(
                schema.IMAGES_COLLECTION, filter=f"item_id == {quote(item_id)}",
                output_fields=["n", "data"], consistency_level="Strong",
                timeout=self._db.timeout)
            return rows

        rows = await self._db.run(call)
        return schema.image_from_rows(rows) if rows else None
