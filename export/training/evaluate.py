"""visrec-evaluate: offline evaluation of model versions on held-out users' interactions.

Users are split by a salted hash of their id: ``--holdout-percent`` of them are held out (the
training job, ``visrec-train``, never sees their interactions). For each held-out user with at
least two distinct items, the first half of those items (in time order) is the history and the
rest are the targets. Every version is asked the same question through the serving path: the
history items' vectors in ``items_v<N>`` (embedded by Triton, version N) query Milvus exactly as
``Recommend`` does (best cosine over the most recent items), history excluded, top k. Reported:
recall@k (targets found / targets) and NDCG@k, averaged over users.

With ``--group-by`` (pictures of one product share a catalog field; groups are held out by the
same hash as users) it also answers "show me this product" across sources: each picture of a
held-out group queries ``items_v<N>`` with its own Triton-made vector, filtered to another source
(``--source-field``, e.g. google -> twitter), exactly as ``SimilarItems`` with a filter does; a hit
is another picture of its group. Reported per source pair: hit@1, hit@k and MRR@k.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from visrec.export.config import (
    JobsConfig,
    add_service_arguments,
    add_setting_flags,
)
from visrec.export.errors import UsageError
from visrec.export.job import Job, progress_bar
from visrec.export.ports import Database
from visrec.export.training.holdout import (
    DEFAULT_SALT,
    Case,
    CatalogGroups,
    cases,
    catalog_groups,
)
from visrec.platform.domain import Equals, IndexInfo
from visrec.platform.errors import VisrecError
from visrec.platform.milvus.schema import items_collection
from visrec.platform.ports import CatalogReads
from visrec.platform.retrieval import multi_interest


class NoHeldOutUsers(VisrecError):
    """The log has no held-out user to score (nothing was simulated or recorded yet)."""


def recall_at(ranked: Sequence[str], targets: frozenset[str], k: int) -> float:
    return len(set(ranked[:k]) & targets) / len(targets) if targets else 0.0


def ndcg_at(ranked: Sequence[str], targets: frozenset[str], k: int) -> float:
    dcg = sum(1 / math.log2(r + 2) for r, item in enumerate(ranked[:k]) if item in targets)
    ideal = sum(1 / math.log2(r + 2) for r in range(min(k, len(targets))))
    return dcg / ideal if ideal else 0.0


@dataclass(frozen=True)
class Score:
    version: str
    users: int
    recall: float
    ndcg: float
    k: int


async def evaluate_version(store: CatalogReads, index: IndexInfo, held: Sequence[Case],
                           *, k: int = 10, recent: int = 10, progress: bool = True) -> Score:
    """recall@k and NDCG@k of one version's index over the held-out cases."""
    recalls, ndcgs = [], []
    for case in progress_bar(held, desc=f"items_v{index.model_version}", unit="user",
                             enabled=progress):
        hits = await multi_interest(store, index, case.history[-recent:], k + len(case.history))
        hits.sort(key=lambda h: -h.score)
        ranked = [h.item.id for h in hits if h.item.id not in case.history][:k]
        recalls.append(recall_at(ranked, case.targets, k))
        ndcgs.append(ndcg_at(ranked, case.targets, k))
    n = len(held)
    return Score(index.model_version, n, sum(recalls) / n if n else 0.0,
                 sum(ndcgs) / n if n else 0.0, k)


async def _indexes(db: Database, versions: Sequence[str]) -> list[IndexInfo]:
    indexes = []
    for version in versions:
        info = await asyncio.to_thread(db.admin.index_info, items_collection(version))
        if info is None:
            raise VisrecError(f"no index for model version {version} (items_v{version}); "
                              f"fill it with visrec-rollout --to {version} --catalog ...")
        indexes.append(info)
    return indexes


async def evaluate(db: Database, versions: Sequence[str], *, percent: float = 20.0,
                   salt: str = DEFAULT_SALT, k: int = 10, user_prefix: str = "",
                   progress: bool = True) -> list[Score]:
    indexes = await _indexes(db, versions)
    events = [e for e in await asyncio.to_thread(db.store.interactions)
              if e.user_id.startswith(user_prefix)]
    # Only items every version holds, so each is asked about the same targets.
    known = frozenset.intersection(*[
        frozenset((await asyncio.to_thread(db.admin.item_vectors, i.collection))[0])
        for i in indexes])
    held = cases(events, percent, salt, known)
    if not held:
        raise NoHeldOutUsers(f"no held-out user with two or more interactions among "
                          f"{len(events)} events (--holdout-percent {percent}); run "
                          f"visrec-simulate first")
    return [await evaluate_version(db.store, info, held, k=k, progress=progress)
            for info in indexes]


@dataclass(frozen=True)
class CrossSourceScore:
    version: str
    source: str
    target: str
    queries: int
    hit1: float
    hit_k: float
    mrr: float
    k: int


async def cross_source(store: CatalogReads, index: IndexInfo, groups: CatalogGroups,
                       items: Sequence[str], source_field: str, *, k: int = 10,
                       batch: int = 64, progress: bool = True) -> list[CrossSourceScore]:
    """For each source s and other source t: every picture of ``items`` from s that has a
    partner from t in its group queries the index filtered to t; the rank of the first partner."""
    grouped = [i for i in items if i in groups.group_of]
    vectors: dict[str, Any] = {}  # the queries' own vectors, fetched once
    for b in range(0, len(grouped), batch):  # bounded replies (Lite stalls on huge ones)
        vectors.update(await store.get_vectors(index, grouped[b:b + batch]))
    present = set(vectors)
    members: dict[str, set[str]] = {}
    for item in present:
        members.setdefault(groups.group_of[item], set()).add(item)
    sources = sorted({groups.source_of[i] for i in present if i in groups.source_of})
    out = []
    for source in sources:
        for target in (t for t in sources if t != source):
            queries = sorted(i for i in present if groups.source_of.get(i) == source and any(
                groups.source_of.get(m) == target for m in members[groups.group_of[i]]))
            ranks: list[int | None] = []
            for b in progress_bar(range(0, len(queries), batch), unit="batch", enabled=progress,
                                  desc=f"items_v{index.model_version} {source}->{target}"):
                chunk = queries[b:b + batch]
                found = await store.search_many(index, [vectors[q] for q in chunk], k,
                                                [Equals(source_field, target)])
                for query, hits in zip(chunk, found, strict=True):
                    group = groups.group_of[query]
                    ranks.append(next((r for r, h in enumerate(hits, 1)
                                       if groups.group_of.get(h.item.id) == group), None))
            n = len(ranks)
            if not n:  # no picture of ``source`` has a partner from ``target``
                continue
            out.append(CrossSourceScore(
                index.model_version, source, target, n,
                sum(r == 1 for r in ranks) / n,
                sum(r is not None for r in ranks) / n,
                sum(1 / r for r in ranks if r is not None) / n, k))
    return out


async def evaluate_groups(db: Database, versions: Sequence[str], catalog: Path, group_by: str,
                          source_field: str, *, percent: float = 20.0, salt: str = DEFAULT_SALT,
                          k: int = 10, progress: bool = True) -> list[CrossSourceScore]:
    """Cross-source retrieval of the held-out groups, for every version asked."""
    groups = catalog_groups(catalog, group_by, source_field)
    held = sorted(i for i in groups.group_of if groups.held_out(i, percent, salt))
    if not held:
        raise VisrecError(f"no held-out group among {len(set(groups.group_of.values()))} "
                          f"groups of {group_by!r} (--holdout-percent {percent})")
    out = []
    for info in await _indexes(db, versions):
        scores = await cross_source(db.store, info, groups, held, source_field, k=k,
                                    progress=progress)
        if not scores:
            raise VisrecError(f"no held-out picture in items_v{info.model_version} has a "
                              f"partner of its {group_by!r} from another {source_field!r}")
        out += scores
    return out


def render_groups(scores: Sequence[CrossSourceScore]) -> str:
    k = scores[0].k if scores else 10
    rows = [f"{'version':<8} {'query -> target':<22} {'queries':>7} {'hit@1':>7} "
            f"{'hit@' + str(k):>7} {'MRR@' + str(k):>7}"]
    rows += [f"{s.version:<8} {s.source + ' -> ' + s.target:<22} {s.queries:>7} {s.hit1:>7.3f} "
             f"{s.hit_k:>7.3f} {s.mrr:>7.3f}" for s in scores]
    return "\n".join(rows)


def render(scores: Sequence[Score]) -> str:
    k = scores[0].k if scores else 10
    rows = [f"{'version':<8} {'users':>6} {'recall@' + str(k):>10} {'NDCG@' + str(k):>9}"]
    rows += [f"{s.version:<8} {s.users:>6} {s.recall:>10.4f} {s.ndcg:>9.4f}" for s in scores]
    return "\n".join(rows)


def _arguments(p: argparse.ArgumentParser, config: JobsConfig) -> None:
    p.add_argument("versions", nargs="+", help="model versions to compare (items_v<N> must exist)")
    add_service_arguments(p, config, triton=False)
    p.add_argument("--holdout-percent", type=float, default=20.0,
                   help="share of users held out (must match visrec-train's)")
    p.add_argument("--salt", default=DEFAULT_SALT, help="salt of the user split")
    p.add_argument("--k", type=int, default=10, help="cut-off of recall@k and NDCG@k")
    p.add_argument("--user-prefix", default="", help="only users whose id starts with this")
    p.add_argument("--group-by", default=None, metavar="FIELD",
                   help="also score cross-source retrieval on held-out groups of pictures that "
                        "share this catalog field (must match visrec-train's)")
    p.add_argument("--source-field", default="vendor",
                   help="with --group-by: the catalog field saying where a picture comes from; "
                        "each source's pictures query every other source's")
    add_setting_flags(p, config, ("catalog",))
    p.add_argument("--json", type=Path, default=None, help="also write the scores here")


def _check(args: argparse.Namespace) -> None:
    if not 0 < args.holdout_percent < 100 or args.k < 1:
        raise UsageError("--holdout-percent must be within (0, 100) and --k >= 1")
    if args.group_by and not args.catalog.is_file():
        raise UsageError(f"--catalog {args.catalog}: no such file (read for --group-by)")


def _run(args: argparse.Namespace, config: JobsConfig) -> int:
    progress = not args.quiet

    async def run() -> tuple[list[Score], list[CrossSourceScore], str | None]:
        db = config.milvus()
        try:
            grouped = [] if not args.group_by else await evaluate_groups(
                db, args.versions, args.catalog, args.group_by, args.source_field,
                percent=args.holdout_percent, salt=args.salt, k=args.k, progress=progress)
            try:
                users = await evaluate(db, args.versions, percent=args.holdout_percent,
                                       salt=args.salt, k=args.k, user_prefix=args.user_prefix,
                                       progress=progress)
            except NoHeldOutUsers as e:
                if not grouped:
                    raise
                return [], grouped, str(e)
            return users, grouped, None
        finally:
            await db.close()

    scores, grouped, missing = asyncio.run(run())
    print(render(scores) if scores else f"held-out users: {missing}")
    if grouped:
        print(f"\nheld-out groups of {args.group_by!r}, by {args.source_field}:")
        print(render_groups(grouped))
    if args.json:
        args.json.write_text(json.dumps({"users": [asdict(s) for s in scores],
                                         "groups": [asdict(s) for s in grouped]}, indent=2))
    return 0


JOB = Job(prog="visrec-evaluate", description=__doc__.split("\n\n")[1] if __doc__ else "",
          add_arguments=_arguments, run=_run, check=_check,
          quiet_help="no progress bars: warnings and errors only")
main = JOB.main


if __name__ == "__main__":
    sys.exit(main())
