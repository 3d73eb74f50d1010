"""Contract tests: the same cases against each unit-test fake and the real server it stands
for, so what the unit tests assume of a fake is what the real adapter does.

- ``InMemoryStore`` (tests/unit/fakes.py) against the Milvus adapters on Milvus Lite and on the
  Milvus 2.3.5 server: catalog reads (the active index, search and its order, neighbours,
  filters, vectors and items by id) and user state (profiles, the interaction log, recent items,
  popularity).
- ``FakeEmbedder`` against ``TritonEmbedder`` on the real Triton: shapes, norms, determinism,
  the errors for an unknown version and for bytes that are not an image.

A store added later joins with one more parameter of the fixture that builds it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from tests.support import photo
from tests.unit.fakes import FakeEmbedder, InMemoryStore
from visrec.export.milvus import MilvusDatabase
from visrec.platform.domain import Equals, IndexInfo, Interaction, Item, Range, UserProfile
from visrec.platform.errors import BackendUnavailable, InvalidArgument
from visrec.platform.milvus.schema import item_row
from visrec.platform.triton_embedder import TritonEmbedder

DIM = 8
INFO = IndexInfo("items_v911", "911", DIM, {"vendor": "string", "rank": "number"}, 12)


def _catalog() -> dict[str, tuple[Item, np.ndarray]]:
    rng = np.random.default_rng(11)
    out = {}
    for n in range(INFO.count):
        v = rng.normal(size=DIM).astype(np.float32)
        item = Item(f"c{n:02d}", f"item {n}", "even" if n % 2 == 0 else "odd", "sub",
                    attributes={"vendor": "a" if n < 6 else "b", "rank": float(n)})
        out[item.id] = (item, v / np.linalg.norm(v))
    return out


@dataclass
class Backend:
    name: str
    store: Any  # the CatalogReads + UserState implementation under test
    info: IndexInfo


@pytest_asyncio.fixture(params=["fake", "milvus-lite", "milvus-server"])
async def backend(request, tmp_path) -> AsyncIterator[Backend]:
    catalog = _catalog()
    if request.param == "fake":
        yield Backend("fake", InMemoryStore(catalog, INFO), INFO)
        return
    uri = (str(tmp_path / "contract.db") if request.param == "milvus-lite"
           else request.getfixturevalue("milvus_db"))
    db = MilvusDatabase(uri, timeout_s=60)
    db.admin.ensure_items_collection(INFO.collection, DIM)
    db.items.upsert(INFO.collection, [item_row(item, v) for item, v in catalog.values()])
    db.items.flush(INFO.collection)
    db.admin.write_index_record(INFO)
    db.admin.activate(INFO.collection)
    try:
        yield Backend(request.param, db.store, INFO)
    finally:
        await db.close()


def _event(n: int, user: str, item: str, kind: str = "click", weight: float = 1.0,
           at: float | None = None) -> Interaction:
    return Interaction(event_id=f"{user}-{n}", user_id=user, item_id=item, kind=kind,
                       weight=weight, at=time.time() + n if at is None else at,
                       experiment="e", arm="a", policy="similarity", request_id=f"r{n}",
                       model_version=INFO.model_version)


# ---------------------------------------------------------------------------------- catalog
async def test_the_active_index_is_the_record_written(backend):
    assert await backend.store.active_index() == backend.info


async def test_search_ranks_by_cosine_best_first_and_caps_at_k(backend):
    catalog = _catalog()
    query = catalog["c03"][1] + 0.3 * catalog["c07"][1]
    hits = await backend.store.search(backend.info, query, 5, [])
    ids = sorted(catalog, key=lambda i: -float(catalog[i][1] @ query))[:5]
    assert [h.item.id for h in hits] == ids
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    expected = [float(catalog[i][1] @ query) / float(np.linalg.norm(query)) for i in ids]
    assert np.allclose(scores, expected, atol=1e-4)
    assert all(h.vector is None for h in hits)
    with_vectors = await backend.store.search(backend.info, query, 2, [], with_vectors=True)
    assert np.allclose(with_vectors[0].vector, catalog[ids[0]][1], atol=1e-6)


async def test_search_keeps_only_what_every_condition_allows(backend):
    query = np.ones(DIM, dtype=np.float32)
    hits = await backend.store.search(backend.info, query, 20,
                                      [Equals("vendor", "b"), Range("rank", 7.0, 10.0),
                                       Equals("category", "odd")])
    assert sorted(h.item.id for h in hits) == ["c07", "c09"]
    assert await backend.store.search(backend.info, query, 20, [Equals("vendor", "zzz")]) == []


async def test_search_many_is_search_for_each_vector(backend):
    catalog = _catalog()
    queries = [catalog["c01"][1], catalog["c10"][1]]
    many = await backend.store.search_many(backend.info, queries, 3, [Equals("vendor", "a")])
    for query, hits in zip(queries, many, strict=True):
        one = await backend.store.search(backend.info, query, 3, [Equals("vendor", "a")])
        assert [h.item.id for h in hits] == [h.item.id for h in one]


async def test_neighbours_start_with_the_item_itself_and_know_a_missing_one(backend):
    hits = await backend.store.neighbours(backend.info, "c04", 4, [])
    assert hits[0].item.id == "c04" and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert len(hits) == 4
    assert await backend.store.neighbours(backend.info, "nope", 4, []) is None


async def test_items_and_vectors_by_id_skip_the_missing_ones(backend):
    catalog = _catalog()
    items = await backend.store.get_items(backend.info, ["c02", "nope", "c11"])
    assert items == {"c02": catalog["c02"][0], "c11": catalog["c11"][0]}
    vectors = await backend.store.get_vectors(backend.info, ["nope", "c05"])
    assert list(vectors) == ["c05"]
    assert np.allclose(vectors["c05"], catalog["c05"][1], atol=1e-6)
    # no ids, no rows (Milvus Lite failed `id in []` with a segcore error before)
    assert await backend.store.get_items(backend.info, []) == {}
    assert await backend.store.get_vectors(backend.info, []) == {}
    assert await backend.store.get_profiles(backend.info, []) == {}
    assert await backend.store.recent_items([], 5) == {}
    assert await backend.store.popularity([]) == {}


# ---------------------------------------------------------------------------------- user state
async def test_a_profile_reads_back_as_it_was_written(backend):
    info, store = backend.info, backend.store
    assert await store.get_profile(info, "u-new") is None
    vector = np.linspace(-1, 1, DIM).astype(np.float32)
    profile = UserProfile("u-1", vector / np.linalg.norm(vector), ("c01", "c02"),
                          {"click": 2}, ("k2", "k1"), 2, 1700000000.0)
    await store.put_profile(info, profile)
    back = await store.get_profile(info, "u-1")
    assert back == profile and np.allclose(back.vector, profile.vector, atol=1e-6)
    assert set(await store.get_profiles(info, ["u-1", "u-new"])) == {"u-1"}


async def test_the_log_is_idempotent_by_event_id(backend):
    store = backend.store
    event = _event(1, "u-log", "c03", weight=2.0)
    assert not await store.event_logged(event.event_id)
    await store.log_interaction(event)
    await store.log_interaction(event)  # a retry
    assert await store.event_logged(event.event_id)
    assert await store.popularity(["c03", "c04"]) == {"c03": 2.0}


async def test_recent_items_are_distinct_and_newest_first(backend):
    store, now = backend.store, time.time()
    for n, item in enumerate(["c01", "c02", "c01", "c03"]):
        await store.log_interaction(_event(n, "u-recent", item, at=now + n))
    await store.log_interaction(_event(9, "u-other", "c09", at=now + 9))
    recent = await store.recent_items(["u-recent", "u-none"], 10)
    assert recent == {"u-recent": ("c03", "c01", "c02")}
    assert (await store.recent_items(["u-recent"], 2))["u-recent"] == ("c03", "c01")


async def test_popularity_sums_weights_and_ranks_the_most_popular(backend):
    store = backend.store
    for n, (item, weight) in enumerate([("c05", 1.0), ("c06", 3.0), ("c05", 1.0),
                                        ("c07", 0.5)]):
        await store.log_interaction(_event(n, "u-pop", item, weight=weight))
    assert await store.popularity(["c05", "c06", "c07", "c08"]) == {
        "c05": 2.0, "c06": 3.0, "c07": 0.5}
    assert await store.most_popular(2) == [("c06", 3.0), ("c05", 2.0)]


# ---------------------------------------------------------------------------------- embedder
@pytest_asyncio.fixture(params=["fake", "triton"])
async def embedder(request) -> AsyncIterator[Any]:
    if request.param == "fake":
        fake = FakeEmbedder(dim=1280)
        yield fake
        return
    real = TritonEmbedder(request.getfixturevalue("triton").grpc_url, timeout_s=120)
    try:
        yield real
    finally:
        await real.close()


async def test_embeddings_are_unit_rows_one_per_image_and_repeatable(embedder):
    images = [photo("coffee", "PNG"), photo("chelsea")]
    vectors = await embedder.embed(images, model_version="1")
    assert vectors.shape == (2, 1280) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    again = await embedder.embed(images[:1], model_version="1")
    assert np.allclose(again[0], vectors[0], atol=1e-4)
    assert not np.allclose(vectors[0], vectors[1], atol=1e-2)
    assert await embedder.ready()
    assert await embedder.served_version() == "1"


async def test_an_unknown_version_and_bytes_that_are_not_an_image_are_refused(embedder):
    # Not served *now* (a replica that has not loaded a rolled-out version yet): UNAVAILABLE,
    # which a client retries, not FAILED_PRECONDITION (the fake said so until this test).
    with pytest.raises(BackendUnavailable, match="977"):
        await embedder.embed([photo()], model_version="977")
    with pytest.raises(InvalidArgument):
        await embedder.embed([b"bad: not an image at all"], model_version="1")
