"""Pure parts of training and offline evaluation: pairs, the head's training and resumption,
the user split, recall and NDCG."""

from __future__ import annotations

import numpy as np
import pytest

from visrec.export.errors import ExportError
from visrec.export.training.data import positive_pairs
from visrec.export.training.evaluate import ndcg_at, recall_at
from visrec.export.training.holdout import cases, held_out
from visrec.export.training.train import TrainConfig, train_head
from visrec.platform.domain import Interaction


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
    from visrec.export.training.data import load_training_data
    from visrec.platform.domain import IndexInfo, Item

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


def _grouped_catalog(tmp_path, n_groups: int = 60):
    """Each group: one google and one twitter picture; users click a group's two pictures."""
    import json

    from visrec.export.training.holdout import catalog_groups

    rows = [{"id": f"{v}:{g}", "image": "x.png", "unified": f"U{g}", "vendor": v}
            for g in range(n_groups) for v in ("google", "twitter")]
    rows.append({"id": "loner", "image": "x.png", "vendor": "google"})  # in no group
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return catalog_groups(path, "unified", "vendor")


def test_training_never_reads_a_held_out_groups_items(tmp_path):
    from visrec.export.training.data import TrainingData, with_groups

    groups = _grouped_catalog(tmp_path)
    ids = [*sorted(groups.group_of), "loner"]
    index_of = {i: n for n, i in enumerate(ids)}
    features = np.arange(len(ids) * 3, dtype=np.float32).reshape(-1, 3)
    clicks = np.array([[index_of[f"google:{g}"], index_of[f"twitter:{g}"]] for g in range(60)])
    data = TrainingData(ids, features, clicks, 60, 120, "1")
    kept, grouped, out = with_groups(data, groups, 25.0, "salt", 10)

    held = {i for i in ids if groups.held_out(i, 25.0, "salt")}
    assert 0 < out < 60 and len(held) == 2 * out  # whole groups, both pictures
    assert not held & set(kept.ids) and "loner" in kept.ids
    # no feature row, interaction pair or group pair of a held-out item survives
    assert {tuple(r) for r in kept.features.tolist()} == {
        tuple(features[index_of[i]].tolist()) for i in kept.ids}
    for pairs in (kept.pairs, grouped):
        named = {(kept.ids[a], kept.ids[b]) for a, b in pairs}
        assert named and not {i for p in named for i in p} & held
        assert all(groups.group_of[a] == groups.group_of[b] for a, b in named)
    assert len(grouped) == 2 * (60 - out) and len(kept.pairs) == 60 - out


def test_catalog_pairs_train_beside_the_interaction_pairs_and_key_the_checkpoint(tmp_path):
    """Clicks pair items of one cluster; the catalog pairs items 2k and 2k+1 (twins across
    clusters). Trained with the catalog pairs too, twins find each other far more often."""
    features, labels, clicks = _clusters(2)
    twins = np.array([(a, b) for k in range(80) for a, b in ((2 * k, 2 * k + 1),
                                                             (2 * k + 1, 2 * k))])
    features[1::2] = features[1::2] * 0.5 + features[0::2] * 0.3  # a weak shared identity

    def twin_at_1(weight: np.ndarray) -> float:
        e = features @ weight.T
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        sims = e[0::2] @ e[1::2].T
        return float((sims.argmax(axis=1) == np.arange(80)).mean())

    config = TrainConfig(dim=16, epochs=6, batch_size=128, lr=1e-2)
    alone = train_head(features, clicks, config, progress=False)
    both = train_head(features, clicks, config, progress=False, grouped=twins)
    assert twin_at_1(both.weight) > twin_at_1(alone.weight) + 0.3, (
        twin_at_1(alone.weight), twin_at_1(both.weight))
    assert _same_cluster_at_5(features @ both.weight.T, labels) > _same_cluster_at_5(
        features, labels)  # the clicks are still learnt

    checkpoint = tmp_path / "checkpoint.pt"
    train_head(features, clicks, config, checkpoint, progress=False, grouped=twins)
    with pytest.raises(ExportError, match="other data or settings"):
        train_head(features, clicks, config, checkpoint, progress=False, grouped=twins[:-2])


async def test_cross_source_ranks_the_first_picture_of_the_same_group(tmp_path):
    """On a circle: google:g lies 0.6 steps past twitter:g, so twitter:(g+1) is nearer to it
    (rank 2 for its partner) and google:(g-1) is nearer to twitter:g (rank 2, except g = 0)."""
    from tests.unit.fakes import InMemoryStore
    from visrec.export.training.evaluate import cross_source
    from visrec.platform.domain import IndexInfo, Item

    groups = _grouped_catalog(tmp_path, 8)
    step = np.pi / 16

    def at(a: float) -> np.ndarray:
        return np.array([np.cos(a), np.sin(a)], np.float32)

    items = {"loner": (Item("loner", attributes={"vendor": "google"}), at(-1.0))}
    for g in range(8):
        items[f"google:{g}"] = (Item(f"google:{g}", attributes={"vendor": "google"}),
                                at((g + 0.6) * step))
        items[f"twitter:{g}"] = (Item(f"twitter:{g}", attributes={"vendor": "twitter"}),
                                 at(g * step))
    index = IndexInfo("items_v1", "1", 2, {"vendor": "string"}, len(items))
    asked = [f"{v}:{g}" for g in range(6) for v in ("google", "twitter")] + ["loner", "gone:1"]
    scores = {(s.source, s.target): s for s in await cross_source(
        InMemoryStore(items, index), index, groups, asked, "vendor", k=10, progress=False)}
    g2t, t2g = scores["google", "twitter"], scores["twitter", "google"]
    assert g2t.queries == t2g.queries == 6  # the loner has no group, gone:1 is not indexed
    assert (g2t.hit1, g2t.hit_k, g2t.mrr) == (0.0, 1.0, 0.5)
    assert (t2g.hit1, t2g.hit_k) == (pytest.approx(1 / 6), 1.0)
    assert t2g.mrr == pytest.approx((1 + 5 * 0.5) / 6)
    one = await cross_source(InMemoryStore(items, index), index, groups, asked, "vendor", k=1,
                             progress=False)
    assert [(s.source, s.hit_k, s.mrr) for s in one] == [("google", 0.0, 0.0),
                                                         ("twitter", pytest.approx(1 / 6),
                                                          pytest.approx(1 / 6))]


def test_a_broken_catalog_is_a_message_with_its_line_not_a_traceback(tmp_path):
    from visrec.export.training.holdout import catalog_groups
    from visrec.platform.errors import VisrecError

    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "a", "unified": "U1"}\n{"id": "b", "unified": \n')
    with pytest.raises(VisrecError, match=r"c.jsonl:2: not JSON"):
        catalog_groups(path, "unified")
    with pytest.raises(VisrecError, match="not found"):
        catalog_groups(tmp_path / "missing.jsonl", "unified")
    path.write_text('{"id": "a", "vendor": "google"}\n')
    with pytest.raises(VisrecError, match=r"no item .* has the field 'unified'"):
        catalog_groups(path, "unified")
