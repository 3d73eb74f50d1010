"""What the gateway knows about users: profiles (per model version) and the interaction log, with
the counts derived from the log (item popularity, a user's recent items). The jobs' reads of whole
collections are ``visrec.export.milvus.MilvusUserLog``.

The log is the source of truth: one row per acknowledged interaction, keyed by its idempotency
key, never rewritten. Popularity and recent items are computed from it when read, so two
gateways recording at once can lose nothing; only the moving-average profile vector is a
read-modify-write, and may lose a step to a concurrent one (README, "Where state lives").
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from visrec.platform.domain import IndexInfo, Interaction, UserProfile
from visrec.platform.milvus import schema
from visrec.platform.milvus.connection import MilvusConnection
from visrec.platform.milvus.expr import quote
from visrec.platform.milvus.serving import in_ids

# Rows one query returns at most (Milvus caps offset + limit); larger reads use the iterator.
RECENT_SCAN = schema.QUERY_PAGE


class MilvusUserStore:
    def __init__(self, db: MilvusConnection) -> None:
        self._db = db

    def _ensure_users(self, c: Any, index: IndexInfo) -> None:
        collection = schema.users_collection(index)
        self._db.ensure(c, collection, lambda c: schema.create_users(
            c, collection, index.dim, self._db.timeout))

    def _ensure_log(self, c: Any) -> bool:
        """Create the log where it is missing (copying a legacy ``interactions`` collection
        into it); False when there is no log and nothing to read."""
        if self._db.exists(c, schema.EVENTS_COLLECTION):
            self._db.ensure(c, schema.EVENTS_COLLECTION, lambda c: None)
            return True
        self._db.ensure(c, schema.EVENTS_COLLECTION,
                        lambda c: schema.create_log(c, self._db.timeout))
        if c.has_collection(schema.LEGACY_EVENTS_COLLECTION, timeout=self._db.timeout):
            self._db.ensure_loaded(c, schema.LEGACY_EVENTS_COLLECTION)
            batch: list[dict[str, Any]] = []
            for row in self._db.scan(c, schema.LEGACY_EVENTS_COLLECTION, ["data"]):
                batch.append(schema.event_row(Interaction(**row["data"])))
                if len(batch) == 512:
                    c.upsert(schema.EVENTS_COLLECTION, batch, timeout=self._db.timeout)
                    batch = []
            if batch:
                c.upsert(schema.EVENTS_COLLECTION, batch, timeout=self._db.timeout)
        return True

    def _log_rows(self, c: Any, expr: str, fields: list[str]) -> Iterator[dict[str, Any]]:
        if not self._db.exists(c, schema.EVENTS_COLLECTION) and not c.has_collection(
                schema.LEGACY_EVENTS_COLLECTION, timeout=self._db.timeout):
            return iter(())
        self._ensure_log(c)
        return self._db.scan(c, schema.EVENTS_COLLECTION, fields, expr=expr)

    # ------------------------------------------------------------------ profiles
    async def get_profile(self, index: IndexInfo, user_id: str, *,
                          for_update: bool = True) -> UserProfile | None:
        """Session consistency: this replica's own writes at once, other replicas' within a
        time tick (~200 ms on a server) without waiting for the tick on every call."""
        collection = schema.users_collection(index)

        def call(c: Any) -> list[dict[str, Any]]:
            if not self._db.exists(c, collection):
                return []
            self._ensure_users(c, index)
            rows: list[dict[str, Any]] = c.query(
                collection, filter=f"id == {quote(user_id)}", output_fields=["vector", "state"],
                consistency_level="Session", timeout=self._db.timeout)
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
                collection, filter=in_ids(user_ids), output_fields=["id", "vector", "state"],
                consistency_level="Strong", timeout=self._db.timeout)
            return rows

        return {r["id"]: schema.profile_from_row(r["id"], r) for r in await self._db.run(call)}

    async def put_profile(self, index: IndexInfo, profile: UserProfile) -> None:
        collection = schema.users_collection(index)
        row = schema.profile_row(profile, index.dim)

        def call(c: Any) -> None:
            self._ensure_users(c, index)
            c.upsert(collection, [row], timeout=self._db.timeout)

        await self._db.run(call)

    # ------------------------------------------------------------------ the interaction log
    async def event_logged(self, event_id: str) -> bool:
        def call(c: Any) -> bool:
            if not self._ensure_log(c):
                return False
            return bool(c.query(schema.EVENTS_COLLECTION, filter=f"id == {quote(event_id)}",
                                output_fields=["id"], consistency_level="Session",
                                timeout=self._db.timeout))

        return await self._db.run(call)

    async def log_interaction(self, event: Interaction) -> None:
        row = schema.event_row(event)

        def call(c: Any) -> None:
            self._ensure_log(c)
            c.upsert(schema.EVENTS_COLLECTION, [row], timeout=self._db.timeout)

        await self._db.run(call)

    async def recent_items(self, user_ids: Sequence[str], limit: int
                           ) -> Mapping[str, tuple[str, ...]]:
        """Each user's ``limit`` most recent distinct items, most recent first, from the log
        (exact for users with up to RECENT_SCAN logged events)."""
        def call(c: Any) -> dict[str, tuple[str, ...]]:
            if not user_ids or not self._ensure_log(c):
                return {}
            rows = c.query(schema.EVENTS_COLLECTION, filter=in_ids(user_ids, "user_id"),
                           output_fields=["user_id", "item_id", "at"], limit=RECENT_SCAN,
                           consistency_level="Session", timeout=self._db.timeout)
            events: dict[str, list[tuple[float, str]]] = defaultdict(list)
            for r in rows:
                events[r["user_id"]].append((float(r["at"]), r["item_id"]))
            return {user: tuple(dict.fromkeys(i for _, i in sorted(evs, reverse=True)))[:limit]
                    for user, evs in events.items()}

        return await self._db.run(call)

    async def popularity(self, ids: Sequence[str]) -> Mapping[str, float]:
        """Weighted interaction count of each item, summed over the log (exact)."""
        def call(c: Any) -> dict[str, float]:
            scores: dict[str, float] = defaultdict(float)
            if ids:
                for r in self._log_rows(c, in_ids(ids, "item_id"), ["item_id", "weight"]):
                    scores[r["item_id"]] += float(r["weight"])
            return dict(scores)

        return await self._db.run(call)

    async def most_popular(self, limit: int) -> list[tuple[str, float]]:
        """The ``limit`` items with the largest weighted counts (a scan of the whole log: the
        fallback list's background refresh, not a request's work)."""
        def call(c: Any) -> list[tuple[str, float]]:
            scores: dict[str, float] = defaultdict(float)
            for r in self._log_rows(c, "", ["item_id", "weight"]):
                scores[r["item_id"]] += float(r["weight"])
            return sorted(scores.items(), key=lambda s: (-s[1], s[0]))[:limit]

        return await self._db.run(call)
