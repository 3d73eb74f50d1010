"""Ingest and the rollout as pure orchestration, over in-memory fakes of Triton and Milvus: the
order of their steps, what they refuse, and what a failure leaves behind. The same jobs run
against real Triton and Milvus in tests/integration (test_ingest, test_hot_reload)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.unit.fakes import FakeDatabase, FakeEmbedder, FakeTritonFleet, InMemoryStore
from visrec.export.indexing.ingest import ingest
from visrec.export.indexing.rollout import carry_profiles, rollout, verify
from visrec.export.indexing.triton_fleet import RolloutError
from visrec.platform.domain import IndexInfo, UserProfile
from visrec.platform.errors import VisrecError


def write_catalog(tmp_path: Path, n: int, bad: frozenset[int] = frozenset()) -> Path:
    (tmp_path / "img").mkdir(exist_ok=True)
    lines = []
    for i in range(n):
        image = tmp_path / "img" / f"{i}.png"
        image.write_bytes((b"bad" if i in bad else b"img") + f"-{i}".encode() * 8)
        lines.append(json.dumps({"id": f"item-{i}", "image": f"img/{i}.png", "name": f"n{i}",
                                 "category": "c" if i % 2 else "d", "vendor": "v",
                                 "added_in": float(i)}))
    path = tmp_path / "catalog.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_ingest_embeds_writes_records_and_activates_the_complete_collection(tmp_path):
    db, embedder = FakeDatabase(), FakeEmbedder(dim=6)
    report = await ingest(write_catalog(tmp_path, 10), db.admin, db.items, embedder,
                          batch_size=3, progress=False)
    assert (report.collection, report.embedded, report.activated) == ("items_v1", 10, True)
    info = db.admin.active_index()
    assert info == IndexInfo("items_v1", "1", 6, {"vendor": "string", "added_in": "number"}, 10)
    assert set(embedder.asked) == {"1"} and embedder.calls == 4  # batches of 3


async def test_ingest_resumes_and_re_embeds_only_changed_rows(tmp_path):
    db, embedder = FakeDatabase(), FakeEmbedder()
    path = write_catalog(tmp_path, 8)
    await ingest(path, db.admin, db.items, embedder, progress=False, activate=False)
    assert db.admin.active_index() is None  # not activated: gateways saw nothing
    lines = path.read_text().splitlines()
    row = json.loads(lines[2])
    row["name"] = "renamed"
    lines[2] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")
    again = await ingest(path, db.admin, db.items, embedder, progress=False)
    assert (again.embedded, again.reused) == (1, 7)
    assert db.store.items["item-2"][0].name == "renamed"


async def test_ingest_isolates_undecodable_images_and_reports_them(tmp_path):
    db, embedder = FakeDatabase(), FakeEmbedder()
    report = await ingest(write_catalog(tmp_path, 6, bad=frozenset({4})), db.admin, db.items,
                          embedder, batch_size=6, progress=False)
    assert report.embedded == 5 and [i for i, _ in report.skipped] == ["item-4"]
    assert db.admin.count("items_v1") == 5


async def test_ingest_refuses_to_activate_a_collection_missing_rows(tmp_path):
    db, embedder = FakeDatabase(), FakeEmbedder()
    db.items.fingerprints = lambda collection: {}  # type: ignore[method-assign]
    real_upsert = db.items.upsert

    def loses_rows(collection, rows):
        real_upsert(collection, rows[:-1])

    db.items.upsert = loses_rows  # type: ignore[method-assign]
    with pytest.raises(VisrecError, match="expected 4"):
        await ingest(write_catalog(tmp_path, 4), db.admin, db.items, embedder, progress=False)
    assert db.admin.active_index() is None


async def _version_1(tmp_path: Path, n: int = 12) -> tuple[FakeDatabase, FakeEmbedder, Path]:
    db = FakeDatabase(InMemoryStore())
    embedder = FakeEmbedder(dim=4, versions={"1": 4, "2": 3})
    catalog = write_catalog(tmp_path, n)
    await ingest(catalog, db.admin, db.items, embedder, model_version="1", progress=False)
    return db, embedder, catalog


async def test_rollout_steps_in_order_and_switches_only_after_verifying(tmp_path):
    db, embedder, catalog = await _version_1(tmp_path)
    triton = FakeTritonFleet(["1"])
    timeline = await rollout("2", db, triton, embedder, catalog=catalog, grace_s=0,
                             progress=False)
    assert [s.name for s in timeline.steps] == ["load", "re-embed", "changes", "verify", "profiles",
                                                "replicas", "switch", "catch-up", "grace",
                                                "unload"]
    assert triton.history == [["1", "2"], ["2"]]  # both during the roll, then only the new one
    assert db.admin.switches == ["items_v1", "items_v2"]
    active = db.admin.active_index()
    assert active.collection == "items_v2" and active.dim == 3 and active.count == 12


async def test_rollout_that_fails_verification_switches_nothing(tmp_path):
    db, embedder, catalog = await _version_1(tmp_path)
    triton = FakeTritonFleet(["1"])
    real_search = db.store.search_many

    async def every_item_finds_another(index, vectors, k, conds, *, with_vectors=False):
        hits = await real_search(index, [-v for v in vectors], k, conds)
        return hits

    db.store.search_many = every_item_finds_another  # type: ignore[method-assign]
    with pytest.raises(RolloutError, match="do not find themselves first"):
        await rollout("2", db, triton, embedder, catalog=catalog, grace_s=0, progress=False)
    assert db.admin.active_index().collection == "items_v1"
    assert db.admin.switches == ["items_v1"]
    assert all(v == ["1", "2"] for v in triton.loaded.values())  # N still served


async def test_rollout_stops_before_the_switch_when_triton_cannot_load(tmp_path):
    db, embedder, catalog = await _version_1(tmp_path)
    triton = FakeTritonFleet(["1"], refuse=["2"])
    with pytest.raises(RolloutError, match="cannot load"):
        await rollout("2", db, triton, embedder, catalog=catalog, grace_s=0, progress=False)
    assert db.admin.active_index().collection == "items_v1"
    assert "items_v2" not in db.store.collections  # nothing re-embedded either


async def test_a_replica_that_lost_the_new_version_stops_the_switch(tmp_path):
    """Between the load and the switch a replica restarts without version 2 (say, from a stale
    repository copy): the check right before the switch names it, and nothing switches."""
    db, embedder, catalog = await _version_1(tmp_path)
    triton = FakeTritonFleet(["1"])
    real_carry = db.store.get_profiles

    async def a_replica_restarts(index, user_ids):
        triton.loaded["triton-b:8001"] = ["1"]
        return await real_carry(index, user_ids)

    db.store.get_profiles = a_replica_restarts  # type: ignore[method-assign]
    await db.store.put_profile(db.admin.index_info("items_v1"),
                               UserProfile("u1", None, ("item-1",), {}, (), 1, 1.0))
    with pytest.raises(RolloutError, match="triton-b:8001"):
        await rollout("2", db, triton, embedder, catalog=catalog, grace_s=0, progress=False)
    assert db.admin.active_index().collection == "items_v1"


async def test_an_alias_that_cannot_move_after_the_switch_does_not_stop_the_rollout(tmp_path):
    """The pointer is what gateways follow. Once it moved, a failing alias (a server that
    cannot find the collection, say) is reported, and the rollout still finishes: before, it
    stopped with both versions loaded on every replica and the pointer already moved."""
    from visrec.platform.errors import BackendUnavailable

    db, embedder, catalog = await _version_1(tmp_path)
    triton = FakeTritonFleet(["1"])

    def broken_alias(alias: str, collection: str) -> bool:
        raise BackendUnavailable(f"collection not found[collection={collection}]")

    db.admin.point_alias = broken_alias  # type: ignore[method-assign]
    timeline = await rollout("2", db, triton, embedder, catalog=catalog, grace_s=0,
                             progress=False)
    switch = next(s for s in timeline.steps if s.name == "switch")
    assert "alias visrec_items NOT moved" in switch.detail and "collection not found" in \
        switch.detail
    assert timeline.steps[-1].name == "unload" and triton.history[-1] == ["2"]
    assert db.admin.active_index().collection == "items_v2"


async def test_verify_counts_rows_against_the_catalog(tmp_path):
    db, _, _ = await _version_1(tmp_path, 5)
    info = db.admin.index_info("items_v1")
    assert "5 items" in await verify(db.admin, db.store, info, 5, sample=5)
    with pytest.raises(RolloutError, match="holds 5 items, the catalog 6"):
        await verify(db.admin, db.store, info, 6, sample=5)


async def test_profiles_are_rebuilt_in_the_new_space_from_recent_items(tmp_path):
    db, embedder, catalog = await _version_1(tmp_path)
    src = db.admin.index_info("items_v1")
    recent = ("item-3", "item-1")  # most recent first
    await db.store.put_profile(src, UserProfile("u1", np.ones(4, np.float32), recent,
                                                {"click": 2}, (), 2, 10.0))
    await rollout("2", db, FakeTritonFleet(["1"]), embedder, catalog=catalog, grace_s=0,
                  progress=False)
    dst = db.admin.index_info("items_v2")
    moved = await db.store.get_profile(dst, "u1")
    assert moved is not None and moved.vector.shape == (3,)
    v1, v3 = (db.store.collections["items_v2"][i][1] for i in ("item-1", "item-3"))
    # oldest first, as clicks: start at item-1, move 0.3 of the way to item-3
    np.testing.assert_allclose(moved.vector, 0.7 * v1 + 0.3 * v3, rtol=1e-5)
    assert moved.recent_items == recent and moved.counts == {"click": 2}


async def test_carry_profiles_leaves_a_newer_profile_alone(tmp_path):
    db, embedder, catalog = await _version_1(tmp_path)
    await ingest(catalog, db.admin, db.items, embedder, model_version="2", activate=False,
                 progress=False)
    src, dst = db.admin.index_info("items_v1"), db.admin.index_info("items_v2")
    await db.store.put_profile(src, UserProfile("u1", None, ("item-1",), {}, (), 1, 5.0))
    newer = UserProfile("u1", np.ones(3, np.float32), ("item-2",), {}, (), 2, 9.0)
    await db.store.put_profile(dst, newer)
    assert await carry_profiles(db.store, src, dst) == 0
    assert (await db.store.get_profile(dst, "u1")).recent_items == ("item-2",)


async def test_ingest_waits_for_triton_to_serve_a_version_then_gives_up_with_a_reason():
    from visrec.export.indexing.ingest import wait_for_version
    from visrec.platform.errors import BackendUnavailable

    answers: list[object] = [BackendUnavailable("Triton (x) unreachable"), None, "3"]

    class Starting(FakeEmbedder):
        async def served_version(self) -> str | None:
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer  # type: ignore[return-value]

    assert await wait_for_version(Starting(), 5, poll_s=0.01) == "3"
    answers[:] = [None] * 1000
    with pytest.raises(VisrecError, match="serves no version after 0s: no image_embedding"):
        await wait_for_version(Starting(), 0.05, poll_s=0.01)
