"""visrec-rollout: serve model version M without ever comparing embeddings of two versions.

    serve N and M on every Triton replica (durably)  ->  re-embed the catalog into items_v<M>
    ->  apply the online catalog changes (gateways write new ones into items_v<M> too from
    here)  ->  verify it  ->  carry user profiles over  ->  check every replica serves M
    ->  switch the active pointer (and the Milvus alias)  ->  grace period  ->  unload N

Gateways pin the version of the active index in every Triton request and follow the pointer
within a second, so requests in flight finish on N and new ones start on M. Rolling back is
the same command towards the old version: its collection is still there, so nothing is
re-embedded. Every step is idempotent: a rollout killed at any point leaves N serving, and
running it again completes it. A replica that cannot load M stops the rollout before the
switch, naming the replica; N keeps serving everywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from visrec.export.config import (
    JobsConfig,
    add_fleet_arguments,
    add_service_arguments,
)
from visrec.export.errors import UsageError
from visrec.export.indexing.ingest import IngestReport, ingest
from visrec.export.indexing.online_changes import catch_up
from visrec.export.indexing.triton_fleet import RolloutError, TritonFleet
from visrec.export.job import Job
from visrec.export.ports import Database, IndexAdmin, JobStore
from visrec.platform.catalog import ONLINE
from visrec.platform.domain import IndexInfo
from visrec.platform.errors import VisrecError
from visrec.platform.milvus.schema import items_collection
from visrec.platform.ports import Embedder

log = logging.getLogger("visrec.rollout")
ALIAS = "visrec_items"
# How long after marking an index as being built every gateway has seen the mark (they read it
# with Session consistency: stale by at most a Milvus time tick, ~0.2 s).
MARK_SETTLE_S = 3.0


class CountMismatch(RolloutError):
    pass


@dataclass
class Step:
    name: str
    started: float
    seconds: float = 0.0
    detail: str = ""


@dataclass
class Timeline:
    to_version: str
    from_version: str | None
    steps: list[Step] = field(default_factory=list)
    ingest: IngestReport | None = None
    expected: int = 0
    switched: bool = False
    marked_at: float = 0.0

    def render(self) -> str:
        t0 = self.steps[0].started if self.steps else 0.0
        lines = [f"rollout {self.from_version or '-'} -> {self.to_version}"]
        for s in self.steps:
            lines.append(f"  +{s.started - t0:7.1f}s  {s.name:<14} {s.seconds:7.1f}s  {s.detail}")
        return "\n".join(lines)


async def verify(admin: IndexAdmin, store: JobStore, info: IndexInfo, expected: int,
                 sample: int, seed: int = 0) -> str:
    """Row count equals the catalog; a random sample of items find themselves first."""
    count = await asyncio.to_thread(admin.count, info.collection)
    if count != expected:
        raise CountMismatch(f"{info.collection} holds {count} items, the catalog {expected}")
    rows = await store.sample_items(info, (), min(max(sample * 4, 200), 16384))
    picked = random.Random(seed).sample([r.id for r in rows], min(sample, len(rows)))
    vectors = await store.get_vectors(info, picked)
    results = await store.search_many(info, [vectors[i] for i in picked], 1, ())
    misses = [i for i, hits in zip(picked, results, strict=True)
              if not hits or (hits[0].item.id != i and hits[0].score < 0.9999)]
    if misses:
        raise RolloutError(f"{len(misses)} of {len(picked)} sampled items of {info.collection} "
                           f"do not find themselves first (e.g. {misses[:3]})")
    return f"{count} items; {len(picked)} sampled items find themselves first"


async def carry_profiles(store: JobStore, src: IndexInfo, dst: IndexInfo,
                         since: float = 0.0, rate: float = 0.3, recent: int = 50) -> int:
    """Rebuild profiles in ``dst``'s space from each user's recent items (from the interaction
    log; oldest first, as clicks). A profile ``dst`` already holds a newer state of is left
    alone."""
    moved = 0
    batches = await asyncio.to_thread(lambda: list(store.profile_batches(src, since)))
    for batch in batches:
        existing = await store.get_profiles(dst, [p.user_id for p in batch])
        todo = [p for p in batch if p.user_id not in existing
                or existing[p.user_id].updated_at < p.updated_at]
        logged = await store.recent_items([p.user_id for p in todo], recent)
        items = {p.user_id: logged.get(p.user_id) or p.recent_items for p in todo}
        ids = sorted({i for user_items in items.values() for i in user_items})
        vectors: dict[str, np.ndarray] = {}
        for start in range(0, len(ids), 1000):
            vectors.update(await store.get_vectors(dst, ids[start:start + 1000]))
        for profile in todo:
            vector: np.ndarray | None = None
            for item_id in reversed(items[profile.user_id]):
                v = vectors.get(item_id)
                if v is not None:
                    vector = v if vector is None else (1 - rate) * vector + rate * v
            await store.put_profile(dst, replace(profile, vector=vector,
                                                 recent_items=tuple(items[profile.user_id])))
            moved += 1
    return moved


async def rollout(
    to_version: str,
    db: Database,
    triton: TritonFleet,
    embedder: Embedder,
    *,
    catalog: Path | None,
    grace_s: float = 30.0,
    sample: int = 50,
    alias: str = ALIAS,
    progress: bool = True,
    on_step: Callable[[Step], object] | None = None,
) -> Timeline:
    current = await asyncio.to_thread(db.admin.active_index)
    from_version = current.model_version if current else None
    timeline = Timeline(to_version, from_version)
    collection = items_collection(to_version)

    async def step(name: str, work: Callable[[], Any]) -> Any:
        s = Step(name, time.time())
        log.info("%s ...", name)
        t = time.perf_counter()
        result = await work()
        s.seconds = time.perf_counter() - t
        s.detail = result if isinstance(result, str) else s.detail
        timeline.steps.append(s)
        if on_step is not None:
            done = on_step(s)
            if inspect.isawaitable(done):  # an observer may act between steps (tests do)
                await done
        return result

    serving = [v for v in {from_version, to_version} if v is not None]

    async def load() -> str:
        replicas = await triton.serve(serving)
        return (f"{len(replicas)} Triton replica(s) serve versions "
                f"{', '.join(sorted(serving, key=int))}: {', '.join(replicas)}")

    await step("load", load)

    async def reembed() -> str:
        record = await asyncio.to_thread(db.admin.read_index_record, collection)
        if catalog is None:
            if record is None:
                raise RolloutError(f"{collection} does not exist: give --catalog to build it")
            return f"{collection} exists ({record.get('count')} items); nothing to embed"
        timeline.ingest = await ingest(catalog, db.admin, db.items, embedder,
                                       model_version=to_version, changes=db.changes,
                                       activate=False, progress=progress)
        r = timeline.ingest
        return (f"{r.embedded} embedded ({r.images_per_s:.0f} img/s), {r.reused} already there, "
                f"{len(r.skipped)} skipped")

    await step("re-embed", reembed)
    info = await asyncio.to_thread(db.admin.index_info, collection)
    if info is None:
        raise RolloutError(f"{collection} has no index record")
    # From here gateways write online catalog changes into the new index as well, and the
    # catch-ups apply every change recorded before (or while) they did.
    await asyncio.to_thread(db.admin.mark_building, info)
    timeline.marked_at = time.monotonic()
    try:
        return await _finish(db, triton, embedder, timeline, step, current, info,
                             grace_s=grace_s, sample=sample, alias=alias)
    except BaseException:
        if not timeline.switched:
            await asyncio.to_thread(db.admin.unmark_building, collection)
        raise


async def _catalog_ids(db: Database, collection: str) -> set[str]:
    """Ids in ``collection`` that came from a catalog file (not from an online change)."""
    prints = await asyncio.to_thread(db.items.fingerprints, collection)
    return {i for i, fp in prints.items() if not fp.startswith(ONLINE)}


async def _finish(db: Database, triton: TritonFleet, embedder: Embedder, timeline: Timeline,
                  step: Callable[[str, Callable[[], Any]], Any], current: IndexInfo | None,
                  info: IndexInfo, *, grace_s: float, sample: int, alias: str) -> Timeline:
    collection, to_version = info.collection, info.model_version
    base = (timeline.ingest.catalog_ids if timeline.ingest
            else await _catalog_ids(db, collection))
    refused = {i for i, _ in timeline.ingest.skipped} if timeline.ingest else set()

    async def ensure(dim: int) -> None:
        await asyncio.to_thread(db.admin.ensure_items_collection, collection, dim)

    async def changes() -> str:
        report = await catch_up(db.changes, db.items, embedder, collection, to_version, ensure)
        skipped = refused | {i for i, _ in report.skipped}
        timeline.expected = len(((base - report.deleted) | report.upserted) - skipped)
        return report.render()

    await step("changes", changes)

    async def check() -> str:
        try:
            return await verify(db.admin, db.store, info, timeline.expected, sample)
        except CountMismatch:  # a change landed between the catch-up and the count
            await changes()
            return await verify(db.admin, db.store, info, timeline.expected, sample)

    await step("verify", check)
    carried_at = time.time()
    if current is not None and current.collection != collection:
        async def profiles() -> str:
            return f"{await carry_profiles(db.store, current, info)} profiles rebuilt"

        await step("profiles", profiles)

    async def fleet() -> str:
        replicas = await triton.verify([to_version])
        return f"{len(replicas)} Triton replica(s) serve version {to_version}"

    await step("replicas", fleet)

    async def switch() -> str:
        # What gateways that had not seen the building mark yet recorded. Gateways read the
        # mark without waiting for Milvus' time tick: give them MARK_SETTLE_S to see it, so
        # every change after this catch-up was written into the new index by its gateway.
        await asyncio.sleep(max(0.0, timeline.marked_at + MARK_SETTLE_S - time.monotonic()))
        late = await changes()
        await asyncio.to_thread(db.admin.activate, collection)
        timeline.switched = True
        # The pointer is what gateways follow; the alias is for other readers. Once switched,
        # a failed alias move must not stop the rollout half-way (both versions loaded).
        try:
            aliased = await asyncio.to_thread(db.admin.point_alias, alias, collection)
        except VisrecError as e:
            log.warning("alias %s not moved to %s: %s", alias, collection, e)
            return f"active index -> {collection}; alias {alias} NOT moved ({e}); {late}"
        return f"active index -> {collection}" + (f"; alias {alias} moved" if aliased else
                                                  " (no aliases on Milvus Lite)") + f"; {late}"

    await step("switch", switch)
    if current is not None and current.collection != collection:
        async def late_profiles() -> str:
            n = await carry_profiles(db.store, current, info, since=carried_at - 1.0)
            return f"{n} profiles updated during the rollout carried over"

        await step("catch-up", late_profiles)

        async def grace() -> str:
            await asyncio.sleep(grace_s)
            return f"{grace_s:.0f}s for gateways to follow and in-flight requests to finish"

        await step("grace", grace)

    async def unload() -> str:
        await asyncio.to_thread(db.admin.unmark_building, collection)
        replicas = await triton.serve([to_version])
        return f"{len(replicas)} Triton replica(s) serve version {to_version} only"

    await step("unload", unload)
    return timeline


def add_arguments(p: argparse.ArgumentParser, config: JobsConfig) -> None:
    """The rollout's flags (also what scripts/rollout_job.py validates its pass-through by)."""
    p.add_argument("--to", dest="to_version", required=False,
                   help="model version to serve (exported with visrec-export)")
    p.add_argument("--catalog", type=Path, default=None,
                   help="catalog to re-embed into items_v<version> (not needed to roll back "
                        "to a version whose collection exists)")
    add_service_arguments(p, config)
    add_fleet_arguments(p, config)
    p.add_argument("--grace-s", type=float, default=30.0,
                   help="wait after the switch before the old version is unloaded (more than "
                        "VISREC_INDEX_REFRESH_S plus the slowest request)")
    p.add_argument("--verify-sample", type=int, default=50,
                   help="items that must find themselves first in the new collection")
    p.add_argument("--alias", default=ALIAS, help="Milvus alias moved with the pointer "
                   "(Milvus server only)")
    p.add_argument("--status", action="store_true",
                   help="print the active index and the versions every Triton replica serves, "
                        "then exit")


def _check(args: argparse.Namespace) -> None:
    if not args.status and not args.to_version:
        raise UsageError("--to VERSION is required (or --status)")
    if args.to_version is not None and not args.to_version.isdigit():
        raise UsageError("--to takes a version number")
    if args.grace_s < 0 or args.verify_sample < 0:
        raise UsageError("--grace-s and --verify-sample must be >= 0")


def _run(args: argparse.Namespace, config: JobsConfig) -> int:

    async def run() -> int:
        db = config.milvus()
        triton = config.fleet()
        embedder = config.embedder()
        try:
            if args.status:
                active = await asyncio.to_thread(db.admin.active_index)
                print(f"active index: {active.collection if active else '-'} (model version "
                      f"{active.model_version if active else '-'}); the repository serves "
                      f"{', '.join(triton.durable()) or 'nothing'}")
                for replica in triton.replicas():
                    served = (await triton.serving(replica))["image_embedding"]
                    print(f"  Triton {replica}: image_embedding {', '.join(served) or '-'}")
                return 0
            timeline = await rollout(args.to_version, db, triton, embedder,
                                     catalog=args.catalog, grace_s=args.grace_s,
                                     sample=args.verify_sample, alias=args.alias,
                                     progress=not args.quiet)
            print(timeline.render())
            return 0
        finally:
            await embedder.close()
            await triton.close()
            await db.close()

    return asyncio.run(run())


JOB = Job(
    prog="visrec-rollout",
    description=(__doc__ or "").split("\n\n")[0].rstrip(".")
    + ". Rolling back is --to <old version>.",
    add_arguments=add_arguments, run=_run, input_files=("catalog",), check=_check,
    quiet_help="no progress bar: warnings and errors only")
main = JOB.main


if __name__ == "__main__":
    sys.exit(main())
