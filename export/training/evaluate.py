"""visrec-evaluate: offline evaluation of model versions on held-out users' interactions.

Users are split by a salted hash of their id: ``--holdout-percent`` of them are held out (the
training job, ``visrec-train``, never sees their interactions). For each held-out user with at
least two distinct items, the first half of those items (in time order) is the history and the
rest are the targets. Every version is asked the same question through the serving path: the
history items' vectors in ``items_v<N>`` (embedded by Triton, version N) query Milvus exactly as
``Recommend`` does (best cosine over the most recent items), history excluded, top k. Reported:
recall@k (targets found / targets) and NDCG@k, averaged over users.
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

from tqdm import tqdm

from visrec.export.config import JobsConfig, add_service_arguments, with_arguments
from visrec.export.training.holdout import DEFAULT_SALT, Case, cases
from visrec.gateway.adapters.milvus.schema import items_collection
from visrec.gateway.config import ConfigError
from visrec.gateway.core.domain import IndexInfo
from visrec.gateway.core.errors import VisrecError
from visrec.gateway.core.ports import CatalogReads, Database
from visrec.gateway.core.retrieval import multi_interest


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
    for case in tqdm(held, desc=f"items_v{index.model_version}", unit="user",
                     disable=not progress):
        hits = await multi_interest(store, index, case.history[-recent:], k + len(case.history))
        hits.sort(key=lambda h: -h.score)
        ranked = [h.item.id for h in hits if h.item.id not in case.history][:k]
        recalls.append(recall_at(ranked, case.targets, k))
        ndcgs.append(ndcg_at(ranked, case.targets, k))
    n = len(held)
    return Score(index.model_version, n, sum(recalls) / n if n else 0.0,
                 sum(ndcgs) / n if n else 0.0, k)


async def evaluate(db: Database, versions: Sequence[str], *, percent: float = 20.0,
                   salt: str = DEFAULT_SALT, k: int = 10, user_prefix: str = "",
                   progress: bool = True) -> list[Score]:
    indexes = []
    for version in versions:
        info = await asyncio.to_thread(db.admin.index_info, items_collection(version))
        if info is None:
            raise VisrecError(f"no index for model version {version} (items_v{version}); "
                              f"fill it with visrec-rollout --to {version} --catalog ...")
        indexes.append(info)
    events = [e for e in await asyncio.to_thread(db.store.interactions)
              if e.user_id.startswith(user_prefix)]
    # Only items every version holds, so each is asked about the same targets.
    known = frozenset.intersection(*[
        frozenset((await asyncio.to_thread(db.admin.item_vectors, i.collection))[0])
        for i in indexes])
    held = cases(events, percent, salt, known)
    if not held:
        raise VisrecError(f"no held-out user with two or more interactions among "
                          f"{len(events)} events (--holdout-percent {percent}); run "
                          f"visrec-simulate first")
    return [await evaluate_version(db.store, info, held, k=k, progress=progress)
            for info in indexes]


def render(scores: Sequence[Score]) -> str:
    k = scores[0].k if scores else 10
    rows = [f"{'version':<8} {'users':>6} {'recall@' + str(k):>10} {'NDCG@' + str(k):>9}"]
    rows += [f"{s.version:<8} {s.users:>6} {s.recall:>10.4f} {s.ndcg:>9.4f}" for s in scores]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    try:
        config = JobsConfig.from_env()
    except ConfigError as e:
        print(f"visrec-evaluate: configuration error: {e}", file=sys.stderr)
        return 2
    p = argparse.ArgumentParser(
        prog="visrec-evaluate", description=__doc__.split("\n\n")[1] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("versions", nargs="+", help="model versions to compare (items_v<N> must exist)")
    add_service_arguments(p, config, triton=False)
    p.add_argument("--holdout-percent", type=float, default=20.0,
                   help="share of users held out (must match visrec-train's)")
    p.add_argument("--salt", default=DEFAULT_SALT, help="salt of the user split")
    p.add_argument("--k", type=int, default=10, help="cut-off of recall@k and NDCG@k")
    p.add_argument("--user-prefix", default="", help="only users whose id starts with this")
    p.add_argument("--json", type=Path, default=None, help="also write the scores here")
    args = p.parse_args(argv)
    if not 0 < args.holdout_percent < 100 or args.k < 1:
        p.error("--holdout-percent must be within (0, 100) and --k >= 1")
    config = with_arguments(config, args)

    async def run() -> list[Score]:
        db = config.milvus()
        try:
            return await evaluate(db, args.versions, percent=args.holdout_percent,
                                  salt=args.salt, k=args.k, user_prefix=args.user_prefix,
                                  progress=sys.stderr.isatty())
        finally:
            await db.close()

    try:
        scores = asyncio.run(run())
    except VisrecError as e:
        print(f"visrec-evaluate: error: {e}", file=sys.stderr)
        return 2
    print(render(scores))
    if args.json:
        args.json.write_text(json.dumps([asdict(s) for s in scores], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
