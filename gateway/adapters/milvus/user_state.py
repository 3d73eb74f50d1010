"""The gateway's writes about users: profiles (per model version), the interaction log and
item popularity; and the reads of them that the rollout and training jobs need."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from visrec.gateway.adapters.milvus import schema
from visrec.gateway.adapters.milvus.connection import MilvusConnection
from visrec.gateway.adapters.milvus.expr import quote
from visrec.gateway.core.domain import IndexInfo, Interaction
from visrec.gateway.core.profiles import UserProfile


class MilvusUserStore:
    def __init__(self, db: MilvusConnection) -> None:
        self._db = db
        self._popularity_locks: dict[str, threading.Lock] = defaultdict(threading.Lock)

    def _ensure_users(self, c: Any, index: IndexInfo) -> None:
        collection = schema.users_collection(index)
        self._db.ensure(c, collection, lambda c: schema.create_users(
            c, collection, index.dim, self._db.timeout))

    def _ensure_records(self, c: Any, collection: str) -> None:
        self._db.ensure(c, collection,
                        lambda c: schema.create_records(c, collection, self._db.timeout))

    # ------------------------------------------------------------------ profiles
    async def get_profile(self, index: IndexInfo, user_id: str, *,
                          for_update: bool = True) -> UserProfile | None:
        """``for_update`` (read-modify-write) reads Strong: it must see every replica's last
        write or an interaction is lost. A read only to serve (Recommend) reads Session: this
        replica's own writes, others' within a time tick (~200 ms), and none of Strong's wait
        for the tick, which on a Milvus server is most of a Recommend's latency."""
        collection = schema.users_collection(index)
        consistency = "Strong" if for_update else "Session"

        def call(c: Any) -> list[dict[str, Any]]:
            if not self._db.exists(c, collection):
                return []
            self._ensure_users(c, index)
            rows: list[dict[str, Any]] = c.query(
                collection, filter=f"id == {quote(user_id)}", output_fields=["vector", "state"],
                consistency_level=consistency, timeout=self._db.timeout)
            return rows

        rows = await self._db.run(call)
        return schema.profile_from_row(user_id, rows[0]) if rows else None

    async def get_profiles(self, index: IndexInfo, user_ids: Sequence[str]
                           ) -> Mapping[str, UserProfile]:
        collection = schema.users_collection(index)

        def call(c: Any) -> list[dict[str, Any]]:
            if not user_ids or not self._db.exists(c, collection):
                return []
            self._ensure_users(c, index)
            rows: list[dict[str, Any]] = c.query(
                collection, filter=f"id in [{', '.join(quote(u) for u in user_ids)}]",
                output_fields=["id", "vector", "state"], consistency_level="Strong",
                timeout=self._db.timeout)
            return rows

        return {r["id"]: schema.profile_from_row(r["id"], r) for r in await self._db.run(call)}

    def profile_batches(self, index: IndexInfo, since: float = 0.0,
                        batch_size: int = 512) -> Iterator[list[UserProfile]]:
        """Every profile of ``index`` updated at or after ``since``, in batches."""
        collection = schema.users_collection(index)
        out: list[list[UserProfile]] = []

        def call(c: Any) -> None:
            if not c.has_collection(collection, timeout=self._db.timeout):
                return
            self._ensure_users(c, index)
            batch: list[UserProfile] = []
            for r in self._db.scan(c, collection, ["id", "vector", "state"], batch_size,
                                   expr=f"{schema.PROFILE_UPDATED_AT} >= {float(since)!r}"):
                batch.append(schema.profile_from_row(r["id"], r))
                if len(batch) == batch_size:
                    out.append(batch)
                    batch = []
            if batch:
                out.append(batch)

        self._db.call(call)
        yield from out

    async def put_profile(self, index: IndexInfo, profile: UserProfile) -> None:
        collection = schema.users_collection(index)
        row = schema.profile_row(profile, index.dim)

        def call(c: Any) -> None:
            self._ensure_users(c, index)
            c.upsert(collection, [row], timeout=self._db.timeout)

        await self._db.run(call)

    # ------------------------------------------------------------------ events, popularity
    async def log_interaction(self, event: Interaction) -> None:
        row = schema.event_row(event)

        def call(c: Any) -> None:
            self._ensure_records(c, schema.EVENTS_COLLECTION)
            c.upsert(schema.EVENTS_COLLECTION, [row], timeout=self._db.timeout)

        await self._db.run(call)

    def interactions(self) -> list[Interaction]:
        """The whole interaction log (for training and evaluation jobs)."""

        def call(c: Any) -> list[Interaction]:
            if not c.has_collection(schema.EVENTS_COLLECTION, timeout=self._db.timeout):
                return []
            self._ensure_records(c, schema.EVENTS_COLLECTION)
            out = [schema.event_from_row(r)
                   for r in self._db.scan(c, schema.EVENTS_COLLECTION, ["data"])]
            return sorted(out, key=lambda e: (e.at, e.event_id))

        return self._db.call(call)

    async def add_popularity(self, item_id: str, weight: float) -> None:
        def call(c: Any) -> None:
            self._ensure_records(c, schema.POPULARITY_COLLECTION)
            with self._popularity_locks[item_id]:  # read-modify-write, one writer per item
                rows = c.query(schema.POPULARITY_COLLECTION, filter=f"id == {quote(item_id)}",
                               output_fields=["score"], consistency_level="Strong",
                               timeout=self._db.timeout)
                score = float(rows[0]["score"]) if rows else 0.0
                c.upsert(schema.POPULARITY_COLLECTION,
                         [schema.popularity_row(item_id, score + weight)],
                         timeout=self._db.timeout)

        await self._db.run(call)
