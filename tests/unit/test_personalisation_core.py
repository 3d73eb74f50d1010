"""Recommend and RecordInteraction in the core, with in-memory adapters."""

import numpy as np
import pytest

from tests.unit.fakes import FakeEmbedder, InMemoryStore
from visrec.gateway.core.active_index import ActiveIndex
from visrec.gateway.core.experiments import parse_experiment
from visrec.gateway.core.popular import PopularItems
from visrec.gateway.core.recommender import Personalisation, RecommenderCore
from visrec.platform.domain import Equals, IndexInfo, Item
from visrec.platform.errors import InvalidArgument, NotFound

INDEX = IndexInfo("items_v1", "1", 3, {"vendor": "string"}, 0)


def catalog() -> dict:
    """Two clusters: fruit near (1, 0, 0) and flags near (0, 1, 0)."""
    rng = np.random.default_rng(1)
    items = {}
    for i in range(20):
        fruit = i < 10
        centre = np.array([1, 0, 0] if fruit else [0, 1, 0], np.float32)
        v = centre + rng.normal(scale=0.1, size=3).astype(np.float32)
        item = Item(f"{'fruit' if fruit else 'flag'}-{i}", category="Food" if fruit else "Flags",
                    subcategory="food-fruit" if fruit else "flag",
                    attributes={"vendor": "google" if i % 2 else "twitter"})
        items[item.id] = (item, v)
    return items


def make(arms: str = "", override: bool = False,
         max_candidates: int = 1000) -> tuple[RecommenderCore, InMemoryStore]:
    store = InMemoryStore(catalog(), INDEX)
    index = ActiveIndex(store)
    exp = parse_experiment("exp" if arms else "", arms)
    core = RecommenderCore(FakeEmbedder(3), store, index,
                           personalisation=Personalisation(experiment=exp,
                                                           allow_arm_override=override,
                                                           max_candidates=max_candidates),
                           popular=PopularItems(store, index), clock=lambda: 1000.0)
    return core, store


async def test_cold_user_gets_the_fallback_marked():
    core, _ = make()
    r = await core.personaliser.recommend("new-user", 5)
    assert r.degraded == "cold_user" and len(r.items) == 5
    # The diverse list alternates categories.
    assert {i.item.category for i in r.items} == {"Food", "Flags"}


async def test_clicks_on_fruit_make_recommendations_fruit():
    core, store = make()
    for i in range(3):
        res = await core.interactions.record("u1", f"fruit-{i}", "click", f"req-{i}")
        assert res.counted
    r = await core.personaliser.recommend("u1", 5)
    assert r.degraded == "" and all(i.item.subcategory == "food-fruit" for i in r.items)
    assert store.profiles["u1"].counts == {"click": 3}
    assert len(store.events) == 3 and store.pop["fruit-0"] == 1.0


async def test_exclude_seen_removes_what_the_user_interacted_with():
    core, _ = make()
    for i in range(3):
        await core.interactions.record("u1", f"fruit-{i}", "click", f"req-{i}")
    seen = {"fruit-0", "fruit-1", "fruit-2"}
    with_seen = {i.item.id for i in (await core.personaliser.recommend("u1", 5)).items}
    answer = await core.personaliser.recommend("u1", 5, exclude_seen=True)
    without = {i.item.id for i in answer.items}
    assert seen <= with_seen and not seen & without and len(without) == 5


async def test_a_retried_interaction_is_acknowledged_but_not_counted():
    core, store = make()
    first = await core.interactions.record("u1", "fruit-1", "purchase", "req-7")
    again = await core.interactions.record("u1", "fruit-1", "purchase", "req-7")
    other_type = await core.interactions.record("u1", "fruit-1", "click", "req-7")
    assert (first.counted, again.counted, other_type.counted) == (True, False, True)
    assert store.profiles["u1"].interactions == 2 and len(store.events) == 2
    assert store.pop["fruit-1"] == 5.0  # purchase 4 + click 1, the retry not at all


async def test_too_few_candidates_are_filled_from_the_fallback_marked():
    core, _ = make(max_candidates=5)
    for i in range(3):
        await core.interactions.record("u1", f"fruit-{i}", "click", f"r{i}")
    r = await core.personaliser.recommend("u1", 5, exclude_seen=True)
    ids = [i.item.id for i in r.items]
    assert r.degraded == "few_candidates" and len(ids) == 5 and len(set(ids)) == 5
    assert not {"fruit-0", "fruit-1", "fruit-2"} & set(ids)


async def test_a_filter_nothing_satisfies_gives_an_empty_marked_answer():
    core, _ = make()
    await core.interactions.record("u1", "fruit-1", "click", "r")
    r = await core.personaliser.recommend("u1", 4, [Equals("vendor", "nobody")])
    assert r.items == [] and r.degraded == "few_candidates"
    filtered = await core.personaliser.recommend("u1", 4, [Equals("category", "Flags")])
    assert len(filtered.items) == 4 and all(i.item.category == "Flags" for i in filtered.items)


async def test_vector_store_down_serves_the_cached_popular_list():
    core, store = make()
    await core.personaliser.recommend("warm-up", 3)  # fills the fallback cache
    store.down = True
    r = await core.personaliser.recommend("u1", 3)
    assert r.degraded == "vector_store_unavailable" and len(r.items) == 3


async def test_vector_store_down_mid_request_and_for_similar_items_degrades_too():
    core, store = make()
    await core.interactions.record("u1", "fruit-1", "click", "r")
    await core.personaliser.recommend("warm-up", 3)  # fills the fallback cache
    calls = 0
    search_many = store.search_many

    async def fails_at_search(*args, **kwargs):  # the profile read works, the ANN does not
        nonlocal calls
        calls += 1
        store.down = True
        return await search_many(*args, **kwargs)

    store.search_many = fails_at_search
    r = await core.personaliser.recommend("u1", 3)
    assert calls == 1 and r.degraded == "vector_store_unavailable" and len(r.items) == 3
    s = await core.search.similar_items("fruit-1", 3, [Equals("category", "Food")])
    assert s.degraded == "vector_store_unavailable" and s.policy == "popularity"
    assert "fruit-1" not in [i.item.id for i in s.items]
    assert s.items and all(i.item.category == "Food" for i in s.items)
    # the active index stays the last one read while Milvus is away
    core._index._read_at = 0.0
    assert (await core._index.current()).model_version == "1"


async def test_arm_is_sticky_and_reported_on_both_rpcs():
    core, _ = make("a=similarity:50, b=mmr(0.5):50")
    arms = {(await core.personaliser.recommend(f"user-{i}", 3)).arm for i in range(40)}
    assert arms == {"a", "b"}
    r1 = await core.personaliser.recommend("user-7", 3)
    r2 = await core.personaliser.recommend("user-7", 3)
    ack = await core.interactions.record("user-7", "fruit-1", "click", "r")
    assert r1.arm == r2.arm == ack.arm and r1.experiment == "exp"
    assert r1.policy == ("similarity" if r1.arm == "a" else "mmr(0.5)")


async def test_arm_override_only_when_enabled():
    closed, _ = make("a=similarity:50, b=mmr(0.5):50")
    natural = (await closed.personaliser.recommend("user-7", 3)).arm
    forced = "b" if natural == "a" else "a"
    assert (await closed.personaliser.recommend("user-7", 3, arm_override=forced)).arm == natural
    opened, _ = make("a=similarity:50, b=mmr(0.5):50", override=True)
    assert (await opened.personaliser.recommend("user-7", 3, arm_override=forced)).arm == forced
    with pytest.raises(InvalidArgument, match="unknown arm 'zzz'"):
        await opened.personaliser.recommend("user-7", 3, arm_override="zzz")


@pytest.mark.parametrize("user, item, kind, error, message", [
    ("", "fruit-1", "click", InvalidArgument, "user_id is empty"),
    ("x" * 10_000, "fruit-1", "click", InvalidArgument, "10000 characters"),
    ("u", "fruit-1", "like", InvalidArgument, "interaction type must be one of"),
    ("u", "nope", "click", NotFound, "'nope'"),
])
async def test_bad_interactions(user, item, kind, error, message):
    core, store = make()
    with pytest.raises(error, match=message):
        await core.interactions.record(user, item, kind, "r")
    assert not store.profiles and not store.events


async def test_a_failed_log_write_fails_the_call_and_the_retry_applies_it_once():
    """The profile moved, then the log (the commit point) failed: the call fails, the retry
    logs the interaction without moving the profile a second time."""
    from visrec.platform.errors import BackendUnavailable

    core, store = make()
    real_log = store.log_interaction

    async def broken(event):
        raise BackendUnavailable("Milvus went away mid-call")

    store.log_interaction = broken  # type: ignore[method-assign]
    with pytest.raises(BackendUnavailable):
        await core.interactions.record("u1", "fruit-1", "click", "req-1")
    assert store.events == {} and store.profiles["u1"].interactions == 1
    store.log_interaction = real_log  # type: ignore[method-assign]
    retry = await core.interactions.record("u1", "fruit-1", "click", "req-1")
    assert retry.counted and len(store.events) == 1
    assert store.profiles["u1"].interactions == 1  # not moved twice
    assert store.pop == {"fruit-1": 1.0}  # counted once, from the log


async def test_a_failed_profile_write_fails_the_call_and_changes_nothing():
    from visrec.platform.errors import BackendUnavailable

    core, store = make()

    async def broken(index, profile):
        raise BackendUnavailable("Milvus went away")

    real_put = store.put_profile
    store.put_profile = broken  # type: ignore[method-assign]
    with pytest.raises(BackendUnavailable):
        await core.interactions.record("u1", "fruit-1", "click", "req-1")
    assert store.events == {} and store.pop == {}
    store.put_profile = real_put  # type: ignore[method-assign]
    assert (await core.interactions.record("u1", "fruit-1", "click", "req-1")).counted
    assert store.pop == {"fruit-1": 1.0}


async def test_a_retry_changes_nothing_not_even_the_logged_time_or_arm():
    core, store = make("a=similarity:50, b=mmr(0.5):50", override=True)
    first = await core.interactions.record("u1", "fruit-1", "click", "req-1")
    [event] = store.events.values()
    again = await core.interactions.record("u1", "fruit-1", "click", "req-1", arm_override="b"
                                          if first.arm == "a" else "a")
    assert not again.counted and list(store.events.values()) == [event]


async def test_recommend_reads_recent_items_from_the_log_not_the_profile_row():
    """A profile row can be missing for a moment (an upsert is a delete and an insert) or lost
    a step to another replica: the log still knows the user's items, so no cold answer."""
    core, store = make()
    for i in range(3):
        await core.interactions.record("u1", f"fruit-{i}", "click", f"req-{i}")
    store.profiles.clear()
    r = await core.personaliser.recommend("u1", 5, exclude_seen=True)
    assert r.degraded == "" and all(i.item.subcategory == "food-fruit" for i in r.items)
    assert not {"fruit-0", "fruit-1", "fruit-2"} & {i.item.id for i in r.items}
