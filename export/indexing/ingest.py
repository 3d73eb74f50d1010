"""visrec-ingest: catalog JSONL + images -> Triton image_embedding -> Milvus items_v<N>.

Reading, embedding and inserting are pipelined (several Triton batches in flight while earlier
ones are written to Milvus). The collection is bound to the model version that embedded it, and
the active pointer is switched only once the collection is complete and counted. Interrupted
runs resume: ids already in the collection are not embedded again.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visrec.export.config import (
    JobsConfig,
    add_service_arguments,
    add_setting_flags,
)
from visrec.export.errors import UsageError
from visrec.export.indexing.catalog_file import CatalogFormatError, CatalogRow, read_catalog
from visrec.export.indexing.online_changes import ChangesReport, catch_up
from visrec.export.job import Job, progress_bar
from visrec.export.ports import IndexAdmin, ItemWriter
from visrec.platform.domain import IndexInfo
from visrec.platform.errors import InvalidArgument, VisrecError
from visrec.platform.milvus import schema
from visrec.platform.ports import ChangeLog, Embedder

__all__ = ["CatalogFormatError", "IngestReport", "ingest", "main"]

log = logging.getLogger("visrec.ingest")


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
    catalog_ids: set[str] = field(default_factory=set)  # from the file, not changed online
    online: ChangesReport | None = None

    @property
    def expected(self) -> int:
        """Items the collection holds: the file's (but those changed online) and the online
        upserts, less what could not be embedded."""
        skipped = {i for i, _ in self.skipped}
        online = self.online.upserted if self.online else set()
        return len((self.catalog_ids | online) - skipped)

    @property
    def images_per_s(self) -> float:
        return self.embedded / self.seconds if self.seconds else 0.0


def _batches(rows: Sequence[CatalogRow], size: int) -> Iterator[Sequence[CatalogRow]]:
    for i in range(0, len(rows), size):
        yield rows[i:i + size]


def _row_for_milvus(row: CatalogRow, vector: np.ndarray) -> dict[str, Any]:
    return schema.item_row(row.item(), vector, row.fingerprint())


async def _embed_batch(embedder: Embedder, batch: Sequence[CatalogRow], version: str,
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
    admin: IndexAdmin,
    writer: ItemWriter,
    embedder: Embedder,
    *,
    model_version: str | None = None,
    changes: ChangeLog | None = None,
    batch_size: int = 32,
    concurrency: int = 4,
    activate: bool = True,
    progress: bool = True,
) -> IngestReport:
    rows, facets, digest = read_catalog(catalog)
    # Online changes win over the file: an item changed online keeps its online state.
    if changes is not None:
        await changes.prepare()
    online = await changes.since(0.0) if changes is not None else []
    changed = {c.item_id for c in online}
    rows = [r for r in rows if r.id not in changed]
    mark = max((c.at for c in online), default=0.0)
    version = model_version or await embedder.served_version()
    if version is None:
        raise VisrecError("Triton serves no image_embedding version")
    collection = schema.items_collection(version)
    report = IngestReport(collection=collection, model_version=version, total=len(rows))
    start = time.perf_counter()

    record = await asyncio.to_thread(admin.read_index_record, collection)
    complete = (record is not None and record.get("catalog_sha256") == digest
                and record.get("changes_at", 0.0) == mark)
    existing = await asyncio.to_thread(writer.fingerprints, collection)
    if complete and len(existing) >= len(rows):
        report.reused = len(rows)
    else:
        # New rows, and rows whose line or image changed since they were embedded.
        todo = [r for r in rows if existing.get(r.id, "") != r.fingerprint()]
        report.reused = len(rows) - len(todo)
        dim: int | None = None
        bar = progress_bar(total=len(rows), initial=report.reused, unit="img",
                           enabled=progress, desc=f"ingest -> {collection}")
        pending: set[asyncio.Task[list[tuple[CatalogRow, np.ndarray]]]] = set()
        writes: list[asyncio.Task[None]] = []
        batches = _batches(todo, batch_size)

        async def write(done: list[tuple[CatalogRow, np.ndarray]]) -> None:
            await asyncio.to_thread(writer.upsert, collection,
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
                    await asyncio.to_thread(admin.ensure_items_collection, collection, dim)
                writes.append(asyncio.create_task(write(done)))
                report.embedded += len(done)
                bar.update(len(done))
        await asyncio.gather(*writes)
        bar.close()
    report.catalog_ids = {r.id for r in rows}
    if changes is not None:
        async def ensure(dim: int) -> None:
            await asyncio.to_thread(admin.ensure_items_collection, collection, dim)

        report.online = await catch_up(changes, writer, embedder, collection, version, ensure)
        report.embedded += report.online.embedded
        report.skipped += report.online.skipped
    report.seconds = time.perf_counter() - start
    if not await asyncio.to_thread(admin.has_collection, collection):
        raise VisrecError("no image of the catalog could be embedded")

    expected = report.expected
    await asyncio.to_thread(writer.flush, collection)
    count = await asyncio.to_thread(admin.count, collection)
    if count < expected:
        raise VisrecError(f"{collection} holds {count} items, expected {expected}")
    dim_now = await asyncio.to_thread(admin.vector_dim, collection)
    info = IndexInfo(collection, version, dim_now, facets, count)
    await asyncio.to_thread(admin.write_index_record, info, {
        "catalog": str(catalog), "catalog_sha256": digest if not report.skipped else "",
        "skipped": len(report.skipped), "changes_at": mark,
    })
    if activate:
        await asyncio.to_thread(admin.activate, collection)
        report.activated = True
    return report


async def wait_for_version(embedder: Embedder, seconds: float, poll_s: float = 5.0) -> str:
    """The version Triton serves, waiting up to ``seconds`` for it to serve one (a first
    deployment starts this job while Triton still waits for the export job)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            version = await embedder.served_version()
            if version is not None:
                return version
            reason = "no image_embedding version is ready"
        except VisrecError as e:
            reason = str(e)
        if time.monotonic() >= deadline:
            raise VisrecError(f"Triton serves no version after {seconds:.0f}s: {reason}")
        log.info("waiting for Triton: %s", reason)
        await asyncio.sleep(poll_s)


def _arguments(p: argparse.ArgumentParser, config: JobsConfig) -> None:
    add_setting_flags(p, config, ("catalog",))
    add_service_arguments(p, config)
    p.add_argument("--model-version", default=None,
                   help="image_encoder version to embed with (default: the one Triton serves)")
    p.add_argument("--batch-size", type=int, default=32, help="images per Triton request")
    p.add_argument("--concurrency", type=int, default=4, help="Triton requests in flight")
    p.add_argument("--no-activate", dest="activate", action="store_false",
                   help="fill the collection but leave the active pointer where it is")
    p.add_argument("--wait-s", type=float, default=0.0,
                   help="wait up to this long for Triton to serve a version before starting")


def _check(args: argparse.Namespace) -> None:
    if args.batch_size < 1 or args.concurrency < 1 or args.wait_s < 0:
        raise UsageError("--batch-size and --concurrency must be >= 1, --wait-s >= 0")


def _run(args: argparse.Namespace, config: JobsConfig) -> int:

    async def run() -> IngestReport:
        db = config.milvus()
        embedder = config.embedder()
        try:
            version = args.model_version
            if args.wait_s > 0 and version is None:
                version = await wait_for_version(embedder, args.wait_s)
            return await ingest(args.catalog, db.admin, db.items, embedder,
                                model_version=version, changes=db.changes,
                                batch_size=args.batch_size,
                                concurrency=args.concurrency, activate=args.activate,
                                progress=not args.quiet)
        finally:
            await embedder.close()
            await db.close()

    report = asyncio.run(run())
    for item_id, reason in report.skipped[:20]:
        log.warning("skipped %s: %s", item_id, reason)
    print(
        f"{report.collection} (model version {report.model_version}): {report.total} items, "
        f"{report.embedded} embedded ({report.images_per_s:.0f} img/s), {report.reused} already "
        f"there, {len(report.skipped)} skipped"
        + (f"; {report.online.render()}" if report.online and report.online.upserted
           | report.online.deleted else "")
        + ("; now the active index" if report.activated else "")
    )
    return 0


JOB = Job(
    prog="visrec-ingest",
    description="Embed a catalog's images through Triton's image_embedding model and write "
                "them, with their fields, into the Milvus collection items_v<N> of the served "
                "model version N; then make it the active index. Resumable and idempotent: "
                "items already in the collection are not embedded again.",
    add_arguments=_arguments, run=_run, input_files=("catalog",), check=_check,
    quiet_help="no progress bar: warnings and errors only")
main = JOB.main


if __name__ == "__main__":
    sys.exit(main())
