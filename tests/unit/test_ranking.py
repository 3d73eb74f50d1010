import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from visrec.gateway.core.ranking import Candidate, PolicyError, RankContext, parse_policy
from visrec.platform.domain import Item

POLICIES = ["similarity", "mmr(0.7)", "mmr(1)", "mmr(0)", "similarity|popularity(0.2)",
            "recency(30)", "similarity|category_cap(2)", "exclude_seen|mmr(0.5)",
            "popularity(1)|recency(365)|category_cap(1)"]


def candidates(n: int, dim: int = 8, seed: int = 0, categories: int = 3) -> list[Candidate]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        v = rng.normal(size=dim).astype(np.float32)
        sim = float(rng.uniform(-1, 1))
        item = Item(f"i{i:03d}", category=f"c{i % categories}",
                    attributes={"created_at": float(rng.integers(0, 10**9))})
        out.append(Candidate(item, sim, sim, v))
    return out


def ctx(k: int, **kw) -> RankContext:
    return RankContext(k=k, now=2e9, **kw)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 40), k=st.integers(1, 50), seed=st.integers(0, 10**6),
       policy=st.sampled_from(POLICIES))
def test_any_policy_returns_min_k_n_unique_items_deterministically(n, k, seed, policy):
    p = parse_policy(policy)
    cands = candidates(n, seed=seed)
    pop = {c.item.id: float(i % 5) for i, c in enumerate(cands)}
    first = p.rank(cands, ctx(k, popularity=pop))
    again = p.rank(list(reversed(cands)), ctx(k, popularity=pop))
    ids = [c.item.id for c in first]
    assert len(ids) == len(set(ids))
    assert ids == [c.item.id for c in again]
    if "category_cap" not in policy:
        assert len(ids) == min(k, n)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), k=st.integers(1, 50), seed=st.integers(0, 10**6))
def test_mmr_with_lambda_one_keeps_similarity_order(n, k, seed):
    cands = candidates(n, seed=seed)
    by_sim = parse_policy("similarity").rank(cands, ctx(k))
    by_mmr = parse_policy("mmr(1.0)").rank(cands, ctx(k))
    assert [c.item.id for c in by_mmr] == [c.item.id for c in by_sim]
    assert [c.similarity for c in by_sim] == sorted((c.similarity for c in by_sim), reverse=True)


def test_mmr_prefers_a_different_item_over_a_near_duplicate():
    a = np.array([1, 0, 0], np.float32)
    dup = np.array([0.99, 0.14, 0], np.float32)
    other = np.array([0, 1, 0], np.float32)
    cands = [Candidate(Item("a"), 0.9, 0.9, a), Candidate(Item("dup"), 0.89, 0.89, dup),
             Candidate(Item("other"), 0.6, 0.6, other)]
    assert [c.item.id for c in parse_policy("mmr(0.5)").rank(cands, ctx(2))] == ["a", "other"]
    assert [c.item.id for c in parse_policy("mmr(1)").rank(cands, ctx(2))] == ["a", "dup"]


def test_popularity_blends_in_log_scaled_counts():
    cands = [Candidate(Item("rare"), 0.8, 0.8), Candidate(Item("hit"), 0.7, 0.7)]
    pop = {"hit": 1000.0, "rare": 0.0}
    assert [c.item.id for c in parse_policy("popularity(0.5)").rank(cands, ctx(2, popularity=pop))
            ] == ["hit", "rare"]
    assert [c.item.id for c in parse_policy("popularity(0)").rank(cands, ctx(2, popularity=pop))
            ] == ["rare", "hit"]


def test_recency_halves_the_score_each_half_life():
    day = 86400.0
    old = Candidate(Item("old", attributes={"created_at": 2e9 - 20 * day}), 0.8, 0.8)
    new = Candidate(Item("new", attributes={"created_at": 2e9}), 0.5, 0.5)
    ranked = parse_policy("recency(10)").rank([old, new], ctx(2))
    assert [c.item.id for c in ranked] == ["new", "old"]
    assert ranked[1].score == pytest.approx(0.8 / 4)


def test_exclude_seen_and_category_cap():
    cands = candidates(12, categories=2)
    seen = frozenset({"i000", "i001"})
    out = parse_policy("exclude_seen|category_cap(2)").rank(cands, ctx(10, seen=seen))
    assert not {c.item.id for c in out} & seen
    assert len(out) == 4 and sorted(c.item.category for c in out) == ["c0", "c0", "c1", "c1"]


@pytest.mark.parametrize("text, message", [
    ("", "empty"), ("magic", "unknown policy step 'magic'"), ("mmr", "needs a parameter"),
    ("mmr(2)", r"within \[0, 1\]"), ("mmr(abc)", "must be a number"),
    ("similarity(1)", "takes no parameter"), ("recency(0)", "> 0"),
    ("category_cap(1.5)", "whole number"), ("mmr(nan)", "finite"), ("mmr((0.5)", "cannot parse"),
])
def test_bad_policies_name_the_problem(text, message):
    with pytest.raises(PolicyError, match=message):
        parse_policy(text)


def test_policy_names_are_canonical():
    assert parse_policy(" similarity | popularity( 0.2 ) ").name == "similarity|popularity(0.2)"
    assert parse_policy("mmr(0.7)").needs_vectors and parse_policy("popularity(1)").needs_popularity
