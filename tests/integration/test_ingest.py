"""visrec-ingest: resumes where it stopped and isolates images Triton cannot decode."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.support import truncated_png
from visrec.export.indexing.catalog_file import CatalogFormatError, read_catalog
from visrec.export.indexing.ingest import ingest
from visrec.export.milvus import MilvusDatabase
from visrec.platform.errors import VisrecError
from visrec.platform.triton_embedder import TritonEmbedder


def _small_catalog(catalog, tmp_path, n: int, corrupt: int | None = None):
    rows = [json.loads(line) for line in catalog.read_text().splitlines()[:n]]
    (tmp_path / "images").mkdir(exist_ok=True)
    for i, row in enumerate(rows):
        target = tmp_path / "images" / f"{i}.png"
        if i == corrupt:
            target.write_bytes(truncated_png())
        elif not target.exists():  # an unchanged image keeps its mtime (its fingerprint)
            shutil.copyfile(catalog.parent / row["image"], target)
        row["image"] = f"images/{i}.png"
    path = tmp_path / f"catalog-{n}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


async def test_interrupted_ingest_resumes_without_re_embedding(triton, catalog, tmp_path):
    db = MilvusDatabase(str(tmp_path / "m.db"), timeout_s=30)
    embedder = TritonEmbedder(triton.grpc_url, timeout_s=60)
    first = await ingest(_small_catalog(catalog, tmp_path, 40), db.admin, db.items, embedder,
                         batch_size=8, progress=False, activate=False)
    assert (first.embedded, first.reused, first.activated) == (40, 0, False)
    assert await db.store.active_index() is None  # not switched: the gateway saw nothing
    # The "rest of the run": a catalog of 100 whose first 40 are already in the collection.
    second = await ingest(_small_catalog(catalog, tmp_path, 100), db.admin, db.items, embedder,
                          batch_size=8, progress=False)
    assert (second.embedded, second.reused) == (60, 40)
    info = await db.store.active_index()
    assert info is not None and info.count == 100 and info.dim == 1280
    assert info.facets["vendor"] == "string" and info.facets["added_in"] == "number"
    again = await ingest(_small_catalog(catalog, tmp_path, 100), db.admin, db.items, embedder,
                         progress=False)
    assert (again.embedded, again.reused) == (0, 100)
    await embedder.close()
    await db.close()


async def test_a_corrupt_catalog_image_is_skipped_and_reported(triton, catalog, tmp_path):
    db = MilvusDatabase(str(tmp_path / "m.db"), timeout_s=30)
    embedder = TritonEmbedder(triton.grpc_url, timeout_s=60)
    report = await ingest(_small_catalog(catalog, tmp_path, 20, corrupt=5), db.admin, db.items,
                          embedder, batch_size=8, progress=False)
    assert report.embedded == 19 and len(report.skipped) == 1
    _, reason = report.skipped[0]
    assert "cannot decode" in reason
    assert db.admin.count(report.collection) == 19
    await embedder.close()
    await db.close()


async def test_ingest_refuses_a_version_triton_does_not_serve(triton, catalog, tmp_path):
    db = MilvusDatabase(str(tmp_path / "m.db"), timeout_s=30)
    embedder = TritonEmbedder(triton.grpc_url, timeout_s=60)
    with pytest.raises(VisrecError, match="does not serve image_embedding version 7"):
        await ingest(_small_catalog(catalog, tmp_path, 4), db.admin, db.items, embedder,
                     model_version="7", progress=False)
    await embedder.close()
    await db.close()


@pytest.mark.parametrize("line, message", [
    ('{"image": "a.png"}', "'id' must be"),
    ('{"id": "a"}', "'image' must be"),
    ('{"id": "a", "image": "a.png", "bad key": 1}', "not an identifier"),
    ('{"id": "a", "image": "a.png", "tags": [1]}', "string or a number"),
    ('not json', "not JSON"),
    ('{"id": "a", "image": "a.png"}\n{"id": "a", "image": "b.png"}', "duplicate id"),
])
def test_malformed_catalog_lines_fail_with_their_line_number(tmp_path, line, message):
    path = tmp_path / "c.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(CatalogFormatError, match=message) as err:
        read_catalog(path)
    assert "c.jsonl:" in str(err.value)


async def test_an_edited_row_is_re_embedded_and_nothing_else(triton, catalog, tmp_path):
    db = MilvusDatabase(str(tmp_path / "m.db"), timeout_s=30)
    embedder = TritonEmbedder(triton.grpc_url, timeout_s=60)
    path = _small_catalog(catalog, tmp_path, 12)
    assert (await ingest(path, db.admin, db.items, embedder, progress=False)).embedded == 12
    lines = path.read_text().splitlines()
    row = json.loads(lines[4])
    row["name"] = "Renamed in the catalog"
    lines[4] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")
    report = await ingest(path, db.admin, db.items, embedder, progress=False)
    assert (report.embedded, report.reused) == (1, 11)
    info = await db.store.active_index()
    items = await db.store.get_items(info, [row["id"]])
    assert items[row["id"]].name == "Renamed in the catalog"
    assert "_fp" not in items[row["id"]].attributes  # bookkeeping stays internal
    await embedder.close()
    await db.close()
