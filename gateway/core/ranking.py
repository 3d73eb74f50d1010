"""Ranking policies: chains of pure steps over an over-fetched candidate set (no I/O).

A policy is written ``step|step|...``, e.g. ``similarity``, ``mmr(0.7)``,
``similarity|popularity(0.2)``, ``recency(30)|category_cap(3)``. Steps:

- ``similarity``         order by cosine similarity to the query (the starting score)
- ``popularity(alpha)``  score <- (1 - alpha) * score + alpha * popularity in [0, 1]
- ``recency(days)``      score <- score * 2^(-age / days), age from the item's created_at
- ``mmr(lambda)``        maximal marginal relevance: lambda * score - (1 - lambda) * max
                         similarity to the items already chosen (needs candidate vectors)
- ``exclude_seen``       drop the items the user has already interacted with
- ``category_cap(n)``    at most n items per category, order kept

Every step keeps the order deterministic: ties are broken by item id.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from visrec.platform.domain import Item


class PolicyError(ValueError):
    """A policy string that does not parse or names an unknown step / bad parameter."""


@dataclass(frozen=True)
class Candidate:
    item: Item
    similarity: float
    score: float
    vector: np.ndarray | None = field(default=None, compare=False)


@dataclass(frozen=True)
class RankContext:
    k: int
    seen: frozenset[str] = frozenset()
    popularity: Mapping[str, float] = field(default_factory=dict)  # item id -> raw count
    now: float = 0.0  # epoch seconds


Step = Callable[[list[Candidate], RankContext], list[Candidate]]


def _by_score(cands: list[Candidate]) -> list[Candidate]:
    return sorted(cands, key=lambda c: (-c.score, c.item.id))


def similarity() -> Step:
    def step(cands: list[Candidate], ctx: RankContext) -> list[Candidate]:
        return _by_score([replace(c, score=c.similarity) for c in cands])

    return step


def popularity(alpha: float) -> Step:
    if not 0.0 <= alpha <= 1.0:
        raise PolicyError(f"popularity(alpha): alpha must be within [0, 1], got {alpha}")

    def step(cands: list[Candidate], ctx: RankContext) -> list[Candidate]:
        counts = [max(0.0, ctx.popularity.get(c.item.id, 0.0)) for c in cands]
        top = math.log1p(max(counts, default=0.0))
        out = []
        for c, n in zip(cands, counts, strict=True):
            pop = math.log1p(n) / top if top > 0 else 0.0
            out.append(replace(c, score=(1 - alpha) * c.score + alpha * pop))
        return _by_score(out)

    return step


def recency(half_life_days: float) -> Step:
    if not half_life_days > 0:
        raise PolicyError(f"recency(days): the half-life must be > 0, got {half_life_days}")

    def step(cands: list[Candidate], ctx: RankContext) -> list[Candidate]:
        out = []
        for c in cands:
            created = c.item.attributes.get("created_at")
            if isinstance(created, int | float) and not isinstance(created, bool):
                age_days = max(0.0, (ctx.now - float(created)) / 86400.0)
                out.append(replace(c, score=c.score * 2.0 ** (-age_days / half_life_days)))
            else:
                out.append(c)  # undated items keep their score
        return _by_score(out)

    return step


def mmr(lam: float) -> Step:
    if not 0.0 <= lam <= 1.0:
        raise PolicyError(f"mmr(lambda): lambda must be within [0, 1], got {lam}")

    def step(cands: list[Candidate], ctx: RankContext) -> list[Candidate]:
        pool = _by_score(list(cands))
        if lam >= 1.0 or len(pool) <= 1:
            return pool
        if any(c.vector is None for c in pool):
            raise PolicyError("mmr needs candidate vectors")
        vecs = np.stack([np.asarray(c.vector, dtype=np.float32) for c in pool])
        vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        sims = vecs @ vecs.T
        rel = np.array([c.score for c in pool])
        chosen: list[int] = []
        max_sim = np.full(len(pool), -np.inf)
        remaining = list(range(len(pool)))
        while remaining and len(chosen) < ctx.k:
            penalty = np.where(np.isinf(max_sim), 0.0, max_sim)
            values = lam * rel[remaining] - (1 - lam) * penalty[remaining]
            best = remaining[int(np.argmax(values))]  # first max: pool is already tie-broken
            chosen.append(best)
            remaining.remove(best)
            max_sim = np.maximum(max_sim, sims[best])
        # The chosen ones first, in MMR order; the rest keep their score order.
        return [pool[i] for i in chosen] + [pool[i] for i in remaining]

    return step


def exclude_seen() -> Step:
    def step(cands: list[Candidate], ctx: RankContext) -> list[Candidate]:
        return [c for c in cands if c.item.id not in ctx.seen]

    return step


def category_cap(n: float) -> Step:
    if n < 1 or n != int(n):
        raise PolicyError(f"category_cap(n): n must be a whole number >= 1, got {n}")

    def step(cands: list[Candidate], ctx: RankContext) -> list[Candidate]:
        taken: dict[str, int] = {}
        out = []
        for c in cands:
            if taken.get(c.item.category, 0) < n:
                taken[c.item.category] = taken.get(c.item.category, 0) + 1
                out.append(c)
        return out

    return step


STEPS: dict[str, tuple[Callable[..., Step], int]] = {
    "similarity": (similarity, 0),
    "popularity": (popularity, 1),
    "recency": (recency, 1),
    "mmr": (mmr, 1),
    "exclude_seen": (exclude_seen, 0),
    "category_cap": (category_cap, 1),
}
_STEP = re.compile(r"^\s*([a-z_]+)\s*(?:\(\s*([^()]*?)\s*\))?\s*$")


@dataclass(frozen=True)
class Policy:
    name: str  # the canonical text, reported in responses and metrics
    steps: tuple[Step, ...]
    needs_vectors: bool = False
    needs_popularity: bool = False

    def rank(self, candidates: Sequence[Candidate], ctx: RankContext) -> list[Candidate]:
        """The top min(k, len(candidates)) after every step, no duplicates."""
        seen_ids: set[str] = set()
        unique = []
        for c in candidates:
            if c.item.id not in seen_ids:
                seen_ids.add(c.item.id)
                unique.append(c)
        out = _by_score(unique)
        for step in self.steps:
            out = step(out, ctx)
        return out[: ctx.k]


def parse_policy(text: str) -> Policy:
    """``similarity|popularity(0.2)`` -> Policy; PolicyError names the bad part."""
    if not text or not text.strip():
        raise PolicyError("empty policy")
    steps: list[Step] = []
    names: list[str] = []
    for part in text.split("|"):
        m = _STEP.match(part)
        if not m:
            raise PolicyError(f"cannot parse policy step {part.strip()!r}")
        name, arg = m.group(1), m.group(2)
        if name not in STEPS:
            raise PolicyError(f"unknown policy step {name!r}; known: {', '.join(sorted(STEPS))}")
        factory, arity = STEPS[name]
        if arity == 0:
            if arg:
                raise PolicyError(f"policy step {name!r} takes no parameter")
            steps.append(factory())
            names.append(name)
            continue
        if arg is None or arg == "":
            raise PolicyError(f"policy step {name!r} needs a parameter, e.g. {name}(0.5)")
        try:
            value = float(arg)
        except ValueError:
            raise PolicyError(f"policy step {name}({arg}): parameter must be a number") from None
        if not math.isfinite(value):
            raise PolicyError(f"policy step {name}({arg}): parameter must be finite")
        steps.append(factory(value))
        names.append(f"{name}({arg})")
    return Policy("|".join(names), tuple(steps),
                  needs_vectors=any(n.startswith("mmr") for n in names),
                  needs_popularity=any(n.startswith("popularity") for n in names))
