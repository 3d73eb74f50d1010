"""python -m bench.heads: which preprocessing and which training serve "show me this product".

One run on this machine, every variant through the serving path (Triton-made vectors in Milvus,
each version rolled out on a real Triton), on the same held-out users and held-out groups:

- ``imagenet``      the backbone's own ImageNet centre crop (``visrec-export --crop-pct 0.875``)
- ``crop 1.0``      the same backbone, the whole picture (the default export since this measure)
- ``clicks``        a head trained on simulated interactions only (from ``imagenet``)
- ``catalog``       a head trained on catalog groups only (``--group-by unified --catalog-only``)
- ``both``          clicks and catalog groups together (``--group-by unified --epochs 3``)
- ``crop+catalog``  the catalog head trained on ``crop 1.0``'s vectors, exported with it
- ``crop+both``     clicks and catalog groups on ``crop 1.0``'s vectors

Reported: held-out users' recall@10 / NDCG@10 (visrec-evaluate), google <-> twitter hit@1,
hit@10 and MRR@10 on held-out groups, and a third kind of picture no version was trained on:
the Facebook drawings of the held-out groups (not in the index), embedded by Triton with each
version and searched in twitter's and google's pictures. Takes ~15 minutes on 2 cores; writes
<out>/heads.md and heads.json. Slow and one-off: a documented command, not a CI test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from visrec.export.cli import build_parser as export_parser
from visrec.export.cli import run as run_export
from visrec.export.indexing.ingest import ingest
from visrec.export.indexing.rollout import rollout
from visrec.export.indexing.triton_fleet import TritonFleet
from visrec.export.milvus import MilvusDatabase
from visrec.export.training.evaluate import evaluate, evaluate_groups
from visrec.export.training.holdout import CatalogGroups, catalog_groups
from visrec.export.training.train import build_parser as train_parser
from visrec.export.training.train import run as run_train
from visrec.gateway.api.server import build_gateway
from visrec.gateway.config import GatewayConfig
from visrec.local.demo import wait_serving
from visrec.local.demo_catalog import build_catalog
from visrec.local.milvus_server import free_port
from visrec.local.simulate import load_catalog, simulate
from visrec.local.triton_server import TritonServer
from visrec.platform.domain import Equals
from visrec.platform.triton_embedder import TritonEmbedder

ROOT = Path(__file__).resolve().parent.parent
SEED = 7
HOLDOUT = 20.0
CATALOG_ONLY = ["--group-by", "unified", "--catalog-only", "--epochs", "10", "--temperature",
                "0.05"]
IMAGENET_CROP = ["--crop-pct", "0.875"]  # EfficientNet-Lite0's own; the default is 1.0
VARIANTS: list[tuple[str, str | None, list[str], list[str]]] = [
    # name, trained from (variant), visrec-train flags, visrec-export flags (a head is exported
    # with the preprocessing of the version whose vectors it was trained on)
    ("imagenet", None, [], IMAGENET_CROP),
    ("crop 1.0", None, [], []),
    ("clicks", "imagenet", [], IMAGENET_CROP),
    ("catalog", "imagenet", CATALOG_ONLY, IMAGENET_CROP),
    ("both", "imagenet", ["--group-by", "unified", "--epochs", "3"], IMAGENET_CROP),
    ("crop+catalog", "crop 1.0", CATALOG_ONLY, []),
    ("crop+both", "crop 1.0", ["--group-by", "unified", "--epochs", "3"], []),
]


async def unseen_source(embedder: TritonEmbedder, db: MilvusDatabase, version: str,
                        groups: CatalogGroups, pictures: dict[str, Path], target: str,
                        k: int = 10) -> dict[str, float]:
    """Pictures from a source that is in no index (keyed by group) query ``target``'s pictures
    of ``items_v<version>``; a hit is the target's picture of the same group."""
    from visrec.platform.milvus.schema import items_collection

    index = await asyncio.to_thread(db.admin.index_info, items_collection(version))
    assert index is not None
    wanted = {g for i, g in groups.group_of.items() if groups.source_of.get(i) == target}
    keys = sorted(g for g in pictures if g in wanted)
    ranks: list[int | None] = []
    for b in range(0, len(keys), 32):
        chunk = keys[b:b + 32]
        vectors = await embedder.embed([pictures[g].read_bytes() for g in chunk],
                                       model_version=version)
        found = await db.store.search_many(index, list(vectors), k, [Equals("vendor", target)])
        for group, hits in zip(chunk, found, strict=True):
            ranks.append(next((r for r, h in enumerate(hits, 1)
                               if groups.group_of.get(h.item.id) == group), None))
    n = len(ranks) or 1
    return {"queries": len(ranks), "hit1": sum(r == 1 for r in ranks) / n,
            "hit10": sum(r is not None for r in ranks) / n,
            "mrr": sum(1 / r for r in ranks if r is not None) / n}


async def main_async(out: Path, catalog: Path, facebook: dict[str, Path], users: int,
                     rounds: int) -> dict[str, Any]:
    """``facebook``: the Facebook drawing of each held-out group, by group."""
    repository, lite = out / "model_repository", str(out / "heads.db")
    groups = catalog_groups(catalog, "unified", "vendor")
    versions: dict[str, str] = {}
    timings: dict[str, float] = {}
    for name, base, _, export_flags in VARIANTS:
        if base is None:
            t = time.perf_counter()
            versions[name] = str(run_export(export_parser().parse_args(
                ["--target", "cpu", "--quiet", "--repository", str(repository), *export_flags])))
            timings[f"export {name}"] = time.perf_counter() - t
    triton = TritonServer(repository=repository, http_port=free_port(), grpc_port=free_port(),
                          metrics_port=free_port(), log_file=out / "tritonserver.log")
    triton.start()
    db = MilvusDatabase(lite, timeout_s=120)
    embedder = TritonEmbedder(triton.grpc_url, timeout_s=300)
    fleet = TritonFleet(triton.grpc_url, repository)
    try:
        await ingest(catalog, db.admin, db.items, embedder, model_version=versions["imagenet"],
                     changes=db.changes, progress=True)
        config = GatewayConfig(triton_url=triton.grpc_url, milvus_uri=lite)
        gw = build_gateway(config, address="127.0.0.1:0", metrics_port=0)
        await gw.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
                await asyncio.to_thread(wait_serving, f"127.0.0.1:{gw.port}")
                await simulate(channel, load_catalog(catalog), users=users, rounds=rounds,
                               k=10, seed=SEED, browse=10, baseline_users=1)
        finally:
            await gw.stop()
        await rollout(versions["crop 1.0"], db, fleet, embedder, catalog=catalog, grace_s=0,
                      progress=True)
        for name, base, train_flags, export_flags in VARIANTS:
            if base is None:
                continue
            t = time.perf_counter()
            head = await asyncio.to_thread(run_train, train_parser().parse_args(
                ["--milvus-uri", lite, "--repository", str(repository), "--out",
                 str(out / "train" / name.replace(" ", "_").replace("+", "_")),
                 "--from-version", versions[base], "--holdout-percent", str(HOLDOUT),
                 "--user-prefix", f"sim-{SEED}-", "--catalog", str(catalog), "--fresh",
                 "--quiet", *train_flags]))
            timings[f"train {name}"] = time.perf_counter() - t
            versions[name] = str(await asyncio.to_thread(run_export, export_parser().parse_args(
                ["--target", "cpu", "--quiet", "--repository", str(repository), "--head",
                 str(head), *export_flags])))
            await rollout(versions[name], db, fleet, embedder, catalog=catalog, grace_s=0,
                          progress=True)
        await rollout(versions["imagenet"], db, fleet, embedder, catalog=None, grace_s=0,
                      progress=False)
        # Every version loaded again, for the unseen-source queries.
        await fleet.serve(sorted(set(versions.values()), key=int))
        order = [versions[name] for name, *_ in VARIANTS]
        users_scores = await evaluate(db, order, percent=HOLDOUT, user_prefix=f"sim-{SEED}-",
                                      progress=False)
        group_scores = await evaluate_groups(db, order, catalog, "unified", "vendor",
                                             percent=HOLDOUT, progress=False)
        unseen = {name: {t: await unseen_source(embedder, db, versions[name], groups,
                                                facebook, t) for t in ("twitter", "google")}
                  for name, *_ in VARIANTS}
    finally:
        await fleet.close()
        await embedder.close()
        await db.close()
        triton.stop()
    return {"versions": versions, "timings": timings,
            "users": {name: vars(s) for (name, *_), s in zip(VARIANTS, users_scores,
                                                              strict=True)},
            "groups": [vars(s) for s in group_scores], "unseen": unseen}


def render(result: dict[str, Any]) -> str:
    by_version = {v: n for n, v in result["versions"].items()}
    cross: dict[str, dict[str, Any]] = {}
    for s in result["groups"]:
        cross.setdefault(by_version[s["version"]], {})[f"{s['source']}>{s['target']}"] = s
    rows = ["| variant | version | users recall@10 | NDCG@10 | google→twitter hit@1 / hit@10 / "
            "MRR | twitter→google hit@1 / hit@10 / MRR | facebook→twitter hit@10 | "
            "facebook→google hit@10 |", "|" + "---|" * 8]
    for name, version in result["versions"].items():
        u, c, f = result["users"][name], cross[name], result["unseen"][name]
        g2t, t2g = c["google>twitter"], c["twitter>google"]
        rows.append(f"| {name} | {version} | {u['recall']:.3f} | {u['ndcg']:.3f} | "
                    f"{g2t['hit1']:.3f} / {g2t['hit_k']:.3f} / {g2t['mrr']:.3f} | "
                    f"{t2g['hit1']:.3f} / {t2g['hit_k']:.3f} / {t2g['mrr']:.3f} | "
                    f"{f['twitter']['hit10']:.3f} | {f['google']['hit10']:.3f} |")
    some = next(iter(result["unseen"].values()))
    rows.append(f"\nqueries: users {next(iter(result['users'].values()))['users']}, "
                f"google→twitter {result['groups'][0]['queries']}, facebook→twitter "
                f"{some['twitter']['queries']}; timings (s): "
                + ", ".join(f"{k} {v:.1f}" for k, v in result["timings"].items()))
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.heads",
                                description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("--out", type=Path, default=ROOT / "artifacts" / "heads")
    p.add_argument("--users", type=int, default=200, help="simulated users")
    p.add_argument("--rounds", type=int, default=4, help="rounds per simulated user")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    catalog = build_catalog()
    third = build_catalog(ROOT / "data" / "catalog-facebook", vendors=("facebook",))
    groups = catalog_groups(catalog, "unified", "vendor")
    held = {g for i, g in groups.group_of.items() if groups.held_out(i, HOLDOUT)}
    facebook = {row["unified"]: third.parent / row["image"]
                for row in map(json.loads, third.read_text().splitlines())
                if row["unified"] in held}
    result = asyncio.run(main_async(args.out, catalog, facebook, args.users, args.rounds))
    (args.out / "heads.json").write_text(json.dumps(result, indent=2, default=float))
    table = render(result)
    (args.out / "heads.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
