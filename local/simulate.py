"""visrec-simulate: synthetic users with hidden tastes use the real gateway.

Each user secretly likes a few subcategories of the catalog and arrives with one view of an item
of one of them (the landing page: every recommender needs a first signal). Every round the user asks
``Recommend`` for k items and clicks each shown item with a probability that depends on whether
it matches the hidden taste; clicks go back through ``RecordInteraction``. The table compares,
per A/B arm: CTR (clicks / impressions) and precision@k against the hidden tastes (share of shown
items the user actually likes), next to two baselines shown to other users of the same kind:
k random catalog items, and the k most clicked items so far (popularity only).

With ``--browse N`` each user also opens, every round, the listing page of one of their tastes
(its subcategory: N of its items in random order, not a recommendation) and clicks there by
the same model. Without it every click lands on an item the serving model itself put in front of the
user, so any offline evaluation on that log favours the serving model (exposure bias); the
organic clicks are what a training job can learn something new from.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from visrec.platform._pb.visrec.v1 import recommender_pb2 as pb
from visrec.platform._pb.visrec.v1 import recommender_pb2_grpc as pb_grpc


@dataclass
class Tally:
    users: int = 0
    impressions: int = 0
    clicks: int = 0
    liked_shown: int = 0  # shown items matching the hidden taste (precision numerator)
    final_liked: int = 0  # the same on the last round only
    final_shown: int = 0
    degraded: Counter[str] = field(default_factory=Counter)
    policy: str = ""

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else 0.0

    @property
    def precision(self) -> float:
        return self.liked_shown / self.impressions if self.impressions else 0.0

    @property
    def final_precision(self) -> float:
        return self.final_liked / self.final_shown if self.final_shown else 0.0


@dataclass(frozen=True)
class ClickModel:
    p_like: float = 0.5  # click probability of an item in the user's taste
    p_other: float = 0.02  # of any other item
    tastes_per_user: int = 2
    min_items_per_taste: int = 8


def load_catalog(path: Path) -> dict[str, str]:
    """item id -> subcategory (the listing the item appears on)."""
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            out[row["id"]] = row.get("subcategory", "")
    return out


def _tastes(catalog: dict[str, str], model: ClickModel, rng: random.Random) -> list[str]:
    sizes = Counter(catalog.values())
    eligible = sorted(s for s, n in sizes.items() if n >= model.min_items_per_taste)
    return rng.sample(eligible, model.tastes_per_user)


async def simulate(channel: grpc.aio.Channel, catalog: dict[str, str], *, users: int,
                   rounds: int, k: int = 10, seed: int = 0, concurrency: int = 16,
                   model: ClickModel = ClickModel(), seed_views: int = 1,
                   baseline_users: int | None = None, browse: int = 0) -> dict[str, Tally]:
    """Run the simulation; returns tallies per arm plus 'baseline:random' and
    'baseline:popular' (and 'organic:browse' with ``browse`` > 0)."""
    stub = pb_grpc.RecommenderStub(channel)
    rng = random.Random(seed)
    people = [(f"sim-{seed}-{i}", set(_tastes(catalog, model, rng))) for i in range(users)]
    baseline_n = baseline_users if baseline_users is not None else max(1, users // 3)
    random_people = [set(_tastes(catalog, model, rng)) for _ in range(baseline_n)]
    popular_people = [set(_tastes(catalog, model, rng)) for _ in range(baseline_n)]
    tallies: dict[str, Tally] = defaultdict(Tally)
    clicks_so_far: Counter[str] = Counter()
    arm_of: dict[str, str] = {}
    items = sorted(catalog)
    sem = asyncio.Semaphore(concurrency)

    def react(tally: Tally, shown: Sequence[str], taste: set[str], r: random.Random,
              last: bool) -> list[str]:
        clicked = []
        for item_id in shown:
            liked = catalog.get(item_id) in taste
            tally.impressions += 1
            tally.liked_shown += liked
            if last:
                tally.final_shown += 1
                tally.final_liked += liked
            if r.random() < (model.p_like if liked else model.p_other):
                clicked.append(item_id)
        tally.clicks += len(clicked)
        return clicked

    async def one(user_id: str, taste: set[str], round_no: int) -> None:
        r = random.Random(f"{seed}:{user_id}:{round_no}")
        async with sem:
            reply = await stub.Recommend(pb.RecommendRequest(user_id=user_id, k=k), timeout=30)
            arm_of[user_id] = reply.arm
            tally = tallies[reply.arm]
            tally.policy = reply.policy
            if reply.degraded:
                tally.degraded[reply.degraded] += 1
            shown = [h.item.id for h in reply.items]
            for item_id in react(tally, shown, taste, r, round_no == rounds - 1):
                clicks_so_far[item_id] += 1
                await stub.RecordInteraction(pb.RecordInteractionRequest(
                    user_id=user_id, item_id=item_id, type=pb.INTERACTION_TYPE_CLICK,
                    request_id=reply.request_id), timeout=30)
            if browse:
                await browse_page(user_id, taste, round_no, r)

    by_taste: dict[str, list[str]] = defaultdict(list)
    for item_id, subcategory in sorted(catalog.items()):
        by_taste[subcategory].append(item_id)

    async def browse_page(user_id: str, taste: set[str], round_no: int,
                          r: random.Random) -> None:
        page = by_taste[r.choice(sorted(taste))]
        tally = tallies["organic:browse"]
        tally.policy = "listing page (random order)"
        shown = r.sample(page, min(browse, len(page)))
        for item_id in react(tally, shown, taste, r, round_no == rounds - 1):
            await stub.RecordInteraction(pb.RecordInteractionRequest(
                user_id=user_id, item_id=item_id, type=pb.INTERACTION_TYPE_CLICK,
                request_id=f"browse-{round_no}"), timeout=30)

    async def arrive(user_id: str, taste: set[str]) -> None:
        r = random.Random(f"{seed}:{user_id}:arrival")
        for n in range(seed_views):
            item_id = r.choice(by_taste[r.choice(sorted(taste))])
            async with sem:
                await stub.RecordInteraction(pb.RecordInteractionRequest(
                    user_id=user_id, item_id=item_id, type=pb.INTERACTION_TYPE_VIEW,
                    request_id=f"arrival-{n}"), timeout=30)

    await asyncio.gather(*(arrive(u, t) for u, t in people))
    for round_no in range(rounds):
        await asyncio.gather(*(one(u, t, round_no) for u, t in people))
        last = round_no == rounds - 1
        rand = tallies["baseline:random"]
        rand.policy = "random items"
        for i, taste in enumerate(random_people):
            r = random.Random(f"{seed}:random:{i}:{round_no}")
            react(rand, r.sample(items, k), taste, r, last)
        pop = tallies["baseline:popular"]
        pop.policy = "most clicked so far"
        top = [i for i, _ in clicks_so_far.most_common(k)]
        top += [i for i in items if i not in top][: k - len(top)]
        for i, taste in enumerate(popular_people):
            r = random.Random(f"{seed}:popular:{i}:{round_no}")
            react(pop, top, taste, r, last)
    for name, count in Counter(arm_of.values()).items():
        tallies[name].users = count
    tallies["baseline:random"].users = tallies["baseline:popular"].users = baseline_n
    if browse:
        tallies["organic:browse"].users = users
    return dict(tallies)


def render(tallies: dict[str, Tally], k: int) -> str:
    rows = [f"{'arm':<18} {'policy':<30} {'users':>5} {'shown':>7} {'clicks':>6} "
            f"{'CTR':>7} {'P@' + str(k) + ' all':>8} {'P@' + str(k) + ' last':>9}  fallbacks"]
    arms = sorted(n for n in tallies if ":" not in n)
    for name in [*arms, "baseline:random", "baseline:popular", "organic:browse"]:
        t = tallies.get(name)
        if t is None:
            continue
        fallbacks = ", ".join(f"{r} {n}" for r, n in sorted(t.degraded.items())) or "-"
        rows.append(f"{name:<18} {t.policy[:30]:<30} {t.users:>5} {t.impressions:>7} "
                    f"{t.clicks:>6} {t.ctr:>7.3f} {t.precision:>8.3f} "
                    f"{t.final_precision:>9.3f}  {fallbacks}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="visrec-simulate",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--gateway", default="localhost:50051", help="gateway gRPC address")
    p.add_argument("--catalog", type=Path, default=Path("data/catalog/emoji.jsonl"),
                   help="the catalog the gateway serves (for the hidden tastes)")
    p.add_argument("--users", type=int, default=300, help="simulated users of the gateway")
    p.add_argument("--rounds", type=int, default=8, help="Recommend -> click rounds per user")
    p.add_argument("--k", type=int, default=10, help="items per recommendation")
    p.add_argument("--seed", type=int, default=0, help="random seed (also names the users)")
    p.add_argument("--p-like", type=float, default=0.5,
                   help="click probability of an item in the user's taste")
    p.add_argument("--p-other", type=float, default=0.02, help="of any other item")
    p.add_argument("--seed-views", type=int, default=1,
                   help="views of items of their taste each user arrives with (0: fully cold)")
    p.add_argument("--browse", type=int, default=0,
                   help="items of a taste's listing page each user also browses every round "
                        "(organic clicks, not shown by the recommender; 0: none)")
    p.add_argument("--concurrency", type=int, default=16, help="users served at once")
    p.add_argument("--json", type=Path, default=None, help="also write the tallies here")
    args = p.parse_args(argv)
    if args.users < 1 or args.rounds < 1 or not 1 <= args.k <= 100 or args.browse < 0:
        p.error("--users and --rounds must be >= 1, --k within 1..100, --browse >= 0")
    if not args.catalog.is_file():
        p.error(f"catalog {args.catalog} not found")
    model = ClickModel(p_like=args.p_like, p_other=args.p_other)

    async def run() -> dict[str, Tally]:
        async with grpc.aio.insecure_channel(args.gateway) as channel:
            return await simulate(channel, load_catalog(args.catalog), users=args.users,
                                  rounds=args.rounds, k=args.k, seed=args.seed,
                                  concurrency=args.concurrency, model=model,
                                  seed_views=args.seed_views, browse=args.browse)

    try:
        tallies = asyncio.run(run())
    except grpc.RpcError as e:
        print(f"visrec-simulate: the gateway answered {e.code().name}: {e.details()}",
              file=sys.stderr)
        return 1
    print(render(tallies, args.k))
    if args.json:
        args.json.write_text(json.dumps(
            {n: {"policy": t.policy, "users": t.users, "impressions": t.impressions,
                 "clicks": t.clicks, "ctr": t.ctr, "precision": t.precision,
                 "final_precision": t.final_precision, "fallbacks": dict(t.degraded)}
             for n, t in tallies.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
