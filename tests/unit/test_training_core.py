"""Pure parts of training and offline evaluation: pairs, the head's training and resumption,
the user split, recall and NDCG."""

from __future__ import annotations

import numpy as np
import pytest

from visrec.export.errors import ExportError
from visrec.export.training.evaluate import ndcg_at, recall_at
from visrec.export.training.holdout import cases, held_out
from visrec.export.training.train import TrainConfig, positive_pairs, train_head
from visrec.gateway.core.domain import Interaction


def test_positive_pairs_are_every_ordered_pair_of_distinct_items_per_basket():
    pairs = positive_pairs([[0, 1, 1, 2], [3], [4, 5]], max_items=10)
    assert sorted(map(tuple, pairs.tolist())) == sorted(
        [(0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1), (4, 5), (5, 4)])
    # only a basket's most recent items
    assert sorted(map(tuple, positive_pairs([[0, 1, 2]], max_items=2).tolist())) == [(1, 2),
                                                                                      (2, 1)]
    assert positive_pairs([[7]], max_items=5).shape == (0, 2)


def _clusters(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features whose dominant directions are noise, with a weak cluster signal; pairs from
    the clusters (what users who like a cluster click together)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(8), 20)
    centres = rng.normal(size=(8, 64))
    features = 0.4 * centres[labels] + rng.normal(size=(160, 64)) * np.linspace(2, 0.2, 64)
    baskets = [list(rng.choice(np.flatnonzero(labels == c), 6, replace=False))
               for c in rng.integers(0, 8, 300)]
    return features.astype(np.float32), labels, positive_pairs(baskets, 10)


def _same_cluster_at_5(embedding: np.ndarray, labels: np.ndarray) -> float:
    e = embedding / np.linalg.norm(embedding, axis=1, keepdims=True)
    sims = e @ e.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argsort(-sims, axis=1)[:, :5]
    return float((labels[top] == labels[:, None]).mean())


def test_the_head_learns_what_is_clicked_together():
    features, labels, pairs = _clusters()
    result = train_head(features, pairs, TrainConfig(dim=16, epochs=8, batch_size=128, lr=1e-2),
                        progress=False)
    before = _same_cluster_at_5(features, labels)
    after = _same_cluster_at_5(features @ result.weight.T, labels)
    assert result.weight.shape == (16, 64)
    assert result.losses[-1] < result.losses[0]
    assert after > before + 0.2, (before, after)


def test_training_resumes_from_its_checkpoint_to_the_same_result(tmp_path):
    features, _, pairs = _clusters(1)
    config = TrainConfig(dim=8, epochs=4, batch_size=64, lr=1e-2)
    straight = train_head(features, pairs, config, progress=False)

    checkpoint = tmp_path / "checkpoint.pt"
    first = train_head(features, pairs, TrainConfig(dim=8, epochs=2, batch_size=64, lr=1e-2),
                       checkpoint, progress=False)
    assert first.resumed_from == 0 and len(first.losses) == 2
    resumed = train_head(features, pairs, config, checkpoint, progress=False)
    assert resumed.resumed_from == 2
    assert resumed.losses == pytest.approx(straight.losses)
    np.testing.assert_allclose(resumed.weight, straight.weight, rtol=1e-5, atol=1e-6)

    with pytest.raises(ExportError, match="other data or settings"):
        train_head(features, pairs[:-2], config, checkpoint, progress=False)
    with pytest.raises(ExportError, match="no positive pairs"):
        train_head(features, pairs[:0], config, progress=False)


def test_the_user_split_is_stable_salted_and_about_the_asked_share():
    users = [f"user-{i}" for i in range(4000)]
    split = [held_out(u, 20) for u in users]
    assert split == [held_out(u, 20) for u in users]
    assert 0.17 < sum(split) / len(users) < 0.23
    assert split != [held_out(u, 20, salt="other") for u in users]
    assert not any(held_out(u, 0) for u in users)


def _event(user: str, item: str, at: float) -> Interaction:
    return Interaction(f"{user}-{item}-{at}", user, item, "click", 1.0, at, "", "", "", "", "1")


def test_cases_split_each_held_out_users_distinct_items_in_time_order():
    held = next(f"u{i}" for i in range(100) if held_out(f"u{i}", 50))
    kept = next(f"u{i}" for i in range(100) if not held_out(f"u{i}", 50))
    events = [_event(held, item, at) for at, item in enumerate("abacdx")]
    events += [_event(kept, "a", 0), _event(kept, "b", 1)]
    out = cases(events, 50, known=frozenset("abcd"))
    assert len(out) == 1
    assert out[0].user_id == held
    assert out[0].history == ("a", "b") and out[0].targets == frozenset("cd")


def test_recall_and_ndcg():
    targets = frozenset({"a", "b"})
    assert recall_at(["a", "x", "b"], targets, 2) == 0.5
    assert recall_at(["x", "y"], targets, 10) == 0.0
    assert ndcg_at(["a", "b", "x"], targets, 10) == pytest.approx(1.0)
    assert ndcg_at(["x", "a", "b"], targets, 10) == pytest.approx(
        (1 / np.log2(3) + 1 / np.log2(4)) / (1 + 1 / np.log2(3)))
    assert ndcg_at(["x"], frozenset(), 10) == 0.0


def test_training_never_reads_a_held_out_users_items():
    """Each user clicks two items nobody else clicks: a pair of those two items exists exactly
    when the user was read. Held-out users' pairs (and other prefixes' users) must be absent."""
    from tests.unit.fakes import FakeDatabase, InMemoryStore
    from visrec.export.training.train import load_training_data
    from visrec.gateway.core.domain import IndexInfo, Item

    users = [f"sim-{n}" for n in range(40)] + [f"other-{n}" for n in range(10)]
    items = {f"{u}:{k}": (Item(f"{u}:{k}"), np.ones(4, np.float32)) for u in users for k in "ab"}
    store = InMemoryStore(items, IndexInfo("items_v1", "1", 4, {}, len(items)))
    for n, u in enumerate(users):
        for k in "ab":
            store.events[f"{u}{k}"] = Interaction(f"{u}{k}", u, f"{u}:{k}", "click", 1.0,
                                                  float(n), "", "", "", "", "1")
    data = load_training_data(FakeDatabase(store), None, 30.0, "salt", 10, user_prefix="sim-")
    read = {data.ids[a].split(":")[0] for a, _ in data.pairs}
    expected = {u for u in users if u.startswith("sim-") and not held_out(u, 30.0, "salt")}
    assert read == expected and data.users == len(expected)
    assert 0 < len(expected) < 40  # some users were held out
