"""visrec-ingest: catalog JSONL + images -> Triton image_embedding -> Milvus items_v<N>.

Reading, embedding and inserting are pipelined (several Triton batches in flight while earlier
ones are written to Milvus). The collection is bound to the model version that embedded it, and
the active pointer is switched only once the collection is complete and counted. Interrupted
runs resume: ids already in the collection are not embedded again.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from gateway.domain import BUILTIN_STRING_FIELDS, FacetType, IndexInfo
from gateway.errors import InvalidArgument, VisrecError
from gateway.milvus_expr import ATTRIBUTE_NAME
from gateway.milvus_store import MilvusVectorStore, infer_facets, items_collection
from gateway.triton_embedder import TritonEmbedder

log = logging.getLogger("visrec.ingest")
RESERVED = {"id", "image", "image_uri", "vector", "attributes", *BUILTIN_STRING_FIELDS}


class CatalogFormatError(ValueError):
    pass


FINGERPRINT = "_fp"  # stored with each item: what the row and its image were when embedded


@dataclass(frozen=True)
class CatalogRow:
    id: str
    image: Path
    image_uri: str
    name: str
    category: str
    subcategory: str
    attributes: dict[str, Any]
    line: str = ""

    def fingerprint(self) -> str:
        """Changes when the catalog line or the image file changes (re-embed then)."""
        try:
            st = self.image.stat()
            image = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            image = "missing"
        return hashlib.sha256(f"{self.line}\x1f{image}".encode()).hexdigest()[:16]


def read_catalog(path: Path) -> tuple[list[CatalogRow], dict[str, FacetType], str]:
    """Rows, attribute facets and a digest of the catalog file. Images are resolved relative
    to the catalog file. Malformed lines fail with their line number."""
    raw = path.read_bytes()
    rows: list[CatalogRow] = []
    seen: set[str] = set()
    for lineno, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise CatalogFormatError(f"{path}:{lineno}: not JSON: {e}") from e
        if not isinstance(obj, dict):
            raise CatalogFormatError(f"{path}:{lineno}: expected a JSON object")
        item_id, image = obj.get("id"), obj.get("image")
        if not isinstance(item_id, str) or not item_id or len(item_id) > 256:
            raise CatalogFormatError(f"{path}:{lineno}: 'id' must be a string of 1-256 chars")
        if item_id in seen:
            raise CatalogFormatError(f"{path}:{lineno}: duplicate id {item_id!r}")
        if not isinstance(image, str) or not image:
            raise CatalogFormatError(f"{path}:{lineno}: 'image' must be a file path")
        seen.add(item_id)
        attrs = {k: v for k, v in obj.items() if k not in RESERVED}
        for key, value in attrs.items():
            if not ATTRIBUTE_NAME.match(key) or key.startswith("_"):
                raise CatalogFormatError(f"{path}:{lineno}: attribute name {key!r} is not an "
                                         "identifier (or starts with _, which is reserved)")
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise CatalogFormatError(f"{path}:{lineno}: attribute {key!r} must be a string "
                                         "or a number")
        rows.append(CatalogRow(
            id=item_id, image=(path.parent / image).resolve(), image_uri=image,
            name=str(obj.get("name", "")), category=str(obj.get("category", "")),
            subcategory=str(obj.get("subcategory", "")), attributes=attrs, line=line.strip(),
        ))
    facets = infer_facets(r.attributes for r in rows)
    for r in rows:  # one type per attribute: numbers of a mixed attribute become strings
        for key, kind in facets.items():
            if key in r.attributes and kind == "string":
                r.attributes[key] = str(r.attributes[key])
    return rows, facets, hashlib.sha256(raw).hexdigest()


@dataclass
class IngestReport:
    collection: str = ""
    model_version: str = ""
    total: int = 0
    embedded: int = 0
    reused: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)
    seconds: float = 0.0
    activated: bool = False

    @property
    def images_per_s(self) -> float:
        return self.embedded / self.seconds if self.seconds else 0.0


def _batches(rows: Sequence[CatalogRow], size: int) -> Iterator[Sequence[CatalogRow]]:
    for i in range(0, len(rows), size):
        yield rows[i:i + size]


def _row_for_milvus(row: CatalogRow, vector: np.ndarray) -> dict[str, Any]:
    return {
        "id": row.id, "vector": vector.astype(np.float32).tolist(), "name": row.name,
        "category": row.category, "subcategory": row.subcategory, "image_uri": row.image_uri,
        "attributes": {**row.attributes, FINGERPRINT: row.fingerprint()},
    }


async def _embed_batch(embedder: TritonEmbedder, batch: Sequence[CatalogRow], version: str,
                       report: IngestReport) -> list[tuple[CatalogRow, np.ndarray]]:
    images = []
    readable: list[CatalogRow] = []
    for row in batch:
        try:
            images.append(await asyncio.to_thread(row.image.read_bytes))
            readable.append(row)
        except OSError as e:
            report.skipped.append((row.id, f"cannot read {row.image}: {e.strerror}"))
    if not readable:
        return []
    try:
        vectors = await embedder.embed(images, model_version=version)
        return list(zip(readable, vectors, strict=True))
    except InvalidArgument:
        # One bad image fails its whole request: isolate it by embedding one by one.
        out = []
        for row, data in zip(readable, images, strict=True):
            try:
                out.append((row, (await embedder.embed([data], model_version=version))[0]))
            except InvalidArgument as e:
                report.skipped.append((row.id, str(e)))
        return out


async def ingest(
    catalog: Path,
    store: MilvusVectorStore,
    embedder: TritonEmbedder,
    *,
    model_version: str | None = None,
    batch_size: int = 32,
    concurrency: int = 4,
    activate: bool = True,
    progress: bool = True,
) -> IngestReport:
    rows, facets, digest = read_catalog(catalog)
    version = model_version or await embedder.served_version()
    if version is None:
        raise VisrecError(f"Triton ({embedder.url}) serves no image_encoder version")
    collection = items_collection(version)
    report = IngestReport(collection=collection, model_version=version, total=len(rows))
    start = time.perf_counter()

    record = await asyncio.to_thread(store.read_index_record, collection)
    complete = (record is not None and record.get("catalog_sha256") == digest
                and record.get("count") == len(rows))
    existing = await asyncio.to_thread(store.existing_fingerprints, collection, FINGERPRINT)
    if complete and len(existing) >= len(rows):
        report.reused = len(rows)
    else:
        # New rows, and rows whose line or image changed since they were embedded.
        todo = [r for r in rows if existing.get(r.id, "") != r.fingerprint()]
        report.reused = len(rows) - len(todo)
        dim: int | None = None
        bar = tqdm(total=len(rows), initial=report.reused, unit="img", disable=not progress,
                   desc=f"ingest -> {collection}", file=sys.stderr, dynamic_ncols=True)
        pending: set[asyncio.Task[list[tuple[CatalogRow, np.ndarray]]]] = set()
        writes: list[asyncio.Task[None]] = []
        batches = _batches(todo, batch_size)

        async def write(done: list[tuple[CatalogRow, np.ndarray]]) -> None:
            await asyncio.to_thread(store.upsert_items, collection,
                                    [_row_for_milvus(r, v) for r, v in done])

        while True:
            while len(pending) < concurrency and (batch := next(batches, None)) is not None:
                pending.add(asyncio.create_task(_embed_batch(embedder, batch, version, report)))
            if not pending:
                break
            finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                done = task.result()
                if not done:
                    continue
                if dim is None:
                    dim = int(done[0][1].shape[0])
                    await asyncio.to_thread(store.ensure_items_collection, collection, dim)
                writes.append(asyncio.create_task(write(done)))
                report.embedded += len(done)
                bar.update(len(done))
        await asyncio.gather(*writes)
        bar.close()
        if dim is None and not existing:
            raise VisrecError("no image of the catalog could be embedded")
    report.seconds = time.perf_counter() - start

    expected = len(rows) - len(report.skipped)
    await asyncio.to_thread(store.flush, collection)
    count = await asyncio.to_thread(store.count, collection)
    if count < expected:
        raise VisrecError(f"{collection} holds {count} items, expected {expected}")
    dim_now = await asyncio.to_thread(store.vector_dim, collection)
    info = IndexInfo(collection, version, dim_now, facets, count)
    await asyncio.to_thread(store.write_index_record, info, {
        "catalog": str(catalog), "catalog_sha256": digest if not report.skipped else "",
        "skipped": len(report.skipped),
    })
    if activate:
        await asyncio.to_thread(store.activate, collection)
        report.activated = True
    return report


def main(argv: list[str] | None = None) -> int:
    from gateway.config import GatewayConfig

    defaults = GatewayConfig.from_env()
    p = argparse.ArgumentParser(
        prog="visrec-ingest",
        description="Embed a catalog's images through Triton's image_embedding ensemble and "
                    "write them, with their fields, into the Milvus collection items_v<N> of the "
                    "served model version N; then make it the active index. Resumable and "
                    "idempotent: items already in the collection are not embedded again.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--catalog", type=Path, default=Path("data/catalog/emoji.jsonl"),
                   help="JSONL: one object per item with id, image (path relative to the file), "
                        "name, category, subcategory; other keys become filterable attributes")
    p.add_argument("--milvus-uri", default=defaults.milvus_uri,
                   help="a file path (Milvus Lite) or http://host:19530 (VISREC_MILVUS_URI)")
    p.add_argument("--milvus-token", default=defaults.milvus_token)
    p.add_argument("--milvus-index-type", default=defaults.milvus_index_type,
                   help="vector index for a new collection (AUTOINDEX, FLAT, IVF_FLAT, HNSW)")
    p.add_argument("--triton-url", default=defaults.triton_url, help="Triton gRPC host:port")
    p.add_argument("--model-version", default=None,
                   help="image_encoder version to embed with (default: the one Triton serves)")
    p.add_argument("--batch-size", type=int, default=32, help="images per Triton request")
    p.add_argument("--concurrency", type=int, default=4, help="Triton requests in flight")
    p.add_argument("--no-activate", dest="activate", action="store_false",
                   help="fill the collection but leave the active pointer where it is")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.concurrency < 1:
        p.error("--batch-size and --concurrency must be >= 1")
    if not args.catalog.is_file():
        p.error(f"catalog {args.catalog} not found (build the demo one with visrec-catalog)")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    logging.getLogger("pymilvus").setLevel(logging.ERROR)

    async def run() -> IngestReport:
        store = MilvusVectorStore(args.milvus_uri, args.milvus_token, 30.0,
                                  args.milvus_index_type)
        embedder = TritonEmbedder(args.triton_url, timeout_s=120.0)
        try:
            return await ingest(args.catalog, store, embedder, model_version=args.model_version,
                                batch_size=args.batch_size, concurrency=args.concurrency,
                                activate=args.activate, progress=not args.quiet)
        finally:
            await embedder.close()
            await store.close()

    try:
        report = asyncio.run(run())
    except (CatalogFormatError, VisrecError) as e:
        print(f"visrec-ingest: error: {e}", file=sys.stderr)
        return 1
    for item_id, reason in report.skipped[:20]:
        print(f"skipped {item_id}: {reason}", file=sys.stderr)
    print(
        f"{report.collection} (model version {report.model_version}): {report.total} items, "
        f"{report.embedded} embedded ({report.images_per_s:.0f} img/s), {report.reused} already "
        f"there, {len(report.skipped)} skipped"
        + ("; now the active index" if report.activated else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
