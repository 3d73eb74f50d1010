import dataclasses

import numpy as np
import pytest

from tests.support import bomb_png, photo
from tests.unit.fakes import FakeEmbedder, InMemoryStore
from visrec.gateway.core.active_index import ActiveIndex
from visrec.gateway.core.recommender import Limits, RecommenderCore
from visrec.platform.domain import AnyOf, Equals, IndexInfo, Item, Range
from visrec.platform.errors import (
    BackendUnavailable,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)

INDEX = IndexInfo("items_v1", "1", 4, {"vendor": "string", "added_in": "number"}, 6)


def _items() -> dict[str, tuple[Item, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = {}
    for n in range(6):
        vendor = "google" if n % 2 else "twitter"
        item = Item(f"i{n}", f"item {n}", "Food & Drink" if n < 3 else "Flags", "sub",
                    attributes={"vendor": vendor, "added_in": float(n)})
        out[item.id] = (item, rng.normal(size=4).astype(np.float32))
    return out


def core(index: IndexInfo | None = INDEX, embedder: FakeEmbedder | None = None,
         max_k: int = 100) -> tuple[RecommenderCore, FakeEmbedder]:
    store = InMemoryStore(_items(), index)
    emb = embedder or FakeEmbedder()
    return RecommenderCore(emb, store, ActiveIndex(store), Limits(max_k=max_k)), emb


def _ranked(query: np.ndarray, exclude: str = "") -> list[str]:
    """The catalog ranked by cosine to ``query``, computed here (not by the fake store)."""
    items = _items()
    ids = [i for i in items if i != exclude]
    vecs = np.stack([items[i][1] for i in ids])
    scores = vecs @ query / np.linalg.norm(vecs, axis=1) / np.linalg.norm(query)
    return [ids[n] for n in np.argsort(-scores, kind="stable")]


async def test_similar_items_excludes_query_item_and_orders_by_score():
    c, _ = core()
    result = await c.search.similar_items("i0", 5)
    ids = [h.item.id for h in result.items]
    assert ids == _ranked(_items()["i0"][1], exclude="i0")[:5]
    assert result.model_version == "1" and result.policy == "similarity"


async def test_similar_items_applies_every_condition():
    c, _ = core()
    result = await c.search.similar_items("i0", 10, [Equals("vendor", "google"),
                                              AnyOf("category", ("Flags",)),
                                              Range("added_in", min=4.0)])
    assert [h.item.id for h in result.items] == ["i5"]


@pytest.mark.parametrize("k", [0, -1, 101, 10001])
async def test_k_outside_limits_is_invalid_argument(k):
    c, _ = core()
    with pytest.raises(InvalidArgument, match="k must be between 1 and 100"):
        await c.search.similar_items("i0", k)


async def test_unknown_item_is_not_found():
    c, _ = core()
    with pytest.raises(NotFound, match="'nope'"):
        await c.search.similar_items("nope", 3)


@pytest.mark.parametrize("item_id, message", [
    ("", "empty"), ("x" * 257, "257 characters"), ("a\x00b", "control characters")])
async def test_malformed_item_ids_are_invalid_argument(item_id, message):
    c, _ = core()
    with pytest.raises(InvalidArgument, match=message):
        await c.search.similar_items(item_id, 3)


async def test_unknown_filter_field_names_the_field():
    c, _ = core()
    with pytest.raises(InvalidArgument, match=r"unknown filter field 'colour'.*vendor"):
        await c.search.similar_items("i0", 3, [Equals("colour", "red")])


async def test_no_index_yet_is_failed_precondition():
    c, _ = core(index=None)
    with pytest.raises(FailedPrecondition, match="visrec-ingest"):
        await c.search.similar_items("i0", 3)


@pytest.mark.parametrize("image, message", [
    (b"", "empty"),
    (b"just some text, not an image", "not in a recognised format"),
    (bomb_png(), "too large.*400000000 pixels"),
])
async def test_bad_images_are_refused_before_embedding(image, message):
    c, emb = core()
    with pytest.raises(InvalidArgument, match=message):
        await c.search.search_by_image(image, 3)
    assert emb.calls == 0


async def test_search_by_image_uses_the_model_version_of_the_active_index():
    """The fake serves both versions: only the version the core asks for can pass."""
    index_v2 = dataclasses.replace(INDEX, collection="items_v2", model_version="2")
    c, emb = core(index=index_v2, embedder=FakeEmbedder(versions={"1": 4, "2": 4}))
    await c.search.search_by_image(photo(), 3)
    assert emb.asked == ["2"]


async def test_search_by_image_fails_when_triton_lacks_the_index_version():
    c, emb = core(embedder=FakeEmbedder(version="2"))
    with pytest.raises(BackendUnavailable, match="asked 1"):  # retryable: not served now
        await c.search.search_by_image(photo(), 3)
    assert emb.asked == ["1"]


async def test_search_by_image_refuses_dimension_mismatch():
    c, _ = core(embedder=FakeEmbedder(dim=8))
    with pytest.raises(FailedPrecondition, match="4-d vectors"):
        await c.search.search_by_image(photo(), 3)


async def test_search_by_image_returns_k_ranked_items():
    c, _ = core()
    image = photo("coffee", "PNG")
    result = await c.search.search_by_image(image, 4)
    query = (await FakeEmbedder().embed([image], model_version="1"))[0]
    assert [h.item.id for h in result.items] == _ranked(query)[:4]


async def test_search_by_image_refuses_what_the_models_config_refuses_before_triton():
    """The model's limits (image_embedding's config parameters) bound what reaches Triton."""
    from PIL import Image

    from tests.support import encode

    c, emb = core()
    emb.limits = {"max_pixels": "16000000", "max_aspect_ratio": "20", "min_side": "64"}
    with pytest.raises(InvalidArgument, match="under the minimum of 64 pixels"):
        await c.search.search_by_image(encode(Image.new("RGB", (48, 48))), 3)
    with pytest.raises(InvalidArgument, match="more than the limit of 20"):
        await c.search.search_by_image(encode(Image.new("RGB", (16000, 100))), 3)
    assert emb.calls == 0
    assert (await c.search.search_by_image(photo(), 3)).items
