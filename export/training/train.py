"""visrec-train: fine-tune a projection head on what users click together.

ImageNet features know what things look like, not what our users consider alike. This job reads
the interaction log and the item vectors of a served version (both from Milvus: the vectors are
what Triton computed for ``items_v<N>``), and trains a linear projection head with a symmetric
InfoNCE (contrastive) loss: two items one user interacted with are a positive pair, the other
items of the batch are the negatives. Users held out for ``visrec-evaluate`` (same hash split)
are never read. Optionally items that share a catalog label (``--label-field``) are positives too.

The head has no bias, so it can be trained on the served, L2-normalised vectors and applied to
the backbone's raw features: normalise(W x / |x|) = normalise(W x). If version N itself had a
head H, the result is W @ H. Its output, ``head.pt``, is what ``visrec-export --head`` turns into
a new model version, and ``visrec-rollout --to <that version>`` serves it.

Checkpoints are written after every epoch (atomically); running the same command again resumes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visrec.export.config import JobsConfig, add_service_arguments, with_arguments
from visrec.export.errors import ExportError
from visrec.gateway.config import ConfigError
from visrec.gateway.core.errors import VisrecError
from visrec.gateway.core.ports import Database

log = logging.getLogger("visrec.train")


@dataclass(frozen=True)
class TrainConfig:
    dim: int = 256
    epochs: int = 6
    batch_size: int = 512
    lr: float = 1e-3
    temperature: float = 0.1
    max_items_per_user: int = 50
    seed: int = 0


@dataclass
class TrainResult:
    weight: np.ndarray  # [dim, in_features]
    losses: list[float] = field(default_factory=list)
    resumed_from: int = 0


def positive_pairs(baskets: Iterable[Sequence[int]], max_items: int) -> np.ndarray:
    """Every ordered pair of distinct items within one basket (a user's most recent
    ``max_items`` items, or one label's items): shape [n, 2]."""
    out = []
    for basket in baskets:
        items = list(dict.fromkeys(basket))[-max_items:]
        if len(items) < 2:
            continue
        a, b = np.meshgrid(items, items, indexing="ij")
        keep = a != b
        out.append(np.stack([a[keep], b[keep]], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 2), dtype=np.int64)


def pca_init(features: np.ndarray, dim: int) -> np.ndarray:
    """The top ``dim`` principal directions: at epoch 0 the head keeps what the features keep."""
    centred = features - features.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    if dim > vt.shape[0]:
        raise ExportError(f"--dim {dim} exceeds the {vt.shape[0]} directions the features have")
    return np.ascontiguousarray(vt[:dim], dtype=np.float32)


def _fingerprint(config: TrainConfig, features: np.ndarray, pairs: np.ndarray) -> str:
    """What a checkpoint must match to be resumed (more epochs may be asked for)."""
    settings = {k: v for k, v in asdict(config).items() if k != "epochs"}
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    h.update(features.tobytes())
    h.update(pairs.tobytes())
    return h.hexdigest()


def train_head(features: np.ndarray, pairs: np.ndarray, config: TrainConfig,
               checkpoint: Path | None = None, progress: bool = True,
               on_epoch: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train W ([dim, in]) with symmetric InfoNCE over ``pairs`` (row indices of ``features``).
    With ``checkpoint``, state is saved after every epoch and a run with the same inputs and
    config resumes from it."""
    import torch
    from tqdm import tqdm

    if len(pairs) == 0:
        raise ExportError("no positive pairs: no user interacted with two or more items")
    torch.manual_seed(config.seed)
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    weight = torch.nn.Parameter(torch.from_numpy(pca_init(features, config.dim)))
    opt = torch.optim.Adam([weight], lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    fingerprint = _fingerprint(config, features, pairs)
    losses: list[float] = []
    start = 0
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if state.get("fingerprint") != fingerprint:
            raise ExportError(f"{checkpoint} was trained on other data or settings; remove it "
                              f"(or pass --fresh) to start over")
        weight.data.copy_(state["weight"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        losses, start = list(state["losses"]), int(state["epoch"])
        log.info("resuming from %s after epoch %d", checkpoint, start)
    pair_t = torch.from_numpy(pairs.astype(np.int64))
    for epoch in range(start, config.epochs):
        order = torch.randperm(len(pair_t), generator=gen)
        total, batches = 0.0, 0
        bar = tqdm(range(0, len(order), config.batch_size), unit="batch", leave=False,
                   desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress)
        for b in bar:
            idx = pair_t[order[b:b + config.batch_size]]
            if len(idx) < 2:
                continue
            a = torch.nn.functional.normalize(x[idx[:, 0]] @ weight.T, dim=1)
            p = torch.nn.functional.normalize(x[idx[:, 1]] @ weight.T, dim=1)
            logits = a @ p.T / config.temperature
            labels = torch.arange(len(a))
            # An item twice in a batch would be its own negative: mask those off-diagonal cells.
            same = ((idx[:, 0][None, :] == idx[:, 0][:, None])
                    | (idx[:, 1][None, :] == idx[:, 1][:, None]))
            same &= ~torch.eye(len(a), dtype=torch.bool)
            logits = logits.masked_fill(same, float("-inf"))
            loss = (torch.nn.functional.cross_entropy(logits, labels)
                    + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
            batches += 1
            bar.set_postfix(loss=f"{total / batches:.4f}")
        losses.append(total / max(batches, 1))
        log.info("epoch %d/%d: loss %.4f", epoch + 1, config.epochs, losses[-1])
        if on_epoch is not None:
            on_epoch(epoch + 1, losses[-1])
        if checkpoint is not None:
            _save_atomically(checkpoint, {
                "fingerprint": fingerprint, "config": asdict(config), "epoch": epoch + 1,
                "weight": weight.detach().clone(), "optimizer": opt.state_dict(),
                "generator": gen.get_state(), "losses": losses})
    return TrainResult(weight.detach().numpy().copy(), losses, start)


def _save_atomically(path: Path, state: Mapping[str, Any]) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(dict(state), tmp)
    os.replace(tmp, path)


def base_head(repository: Path, version: str) -> np.ndarray | None:
    """The bias-free head version ``version`` was exported with, or None (backbone features)."""
    import torch

    meta_path = repository / "image_encoder" / version / "export.json"
    if not meta_path.is_file():
        raise ExportError(f"{meta_path} not found: is {repository} the repository that serves "
                          f"version {version}?")
    meta = json.loads(meta_path.read_text())
    if not meta.get("head_sha256"):
        return None
    head = Path(meta.get("head") or "")
    if not head.is_file() or _sha256(head) != meta["head_sha256"]:
        raise ExportError(f"version {version} was exported with the head {head}, which is gone "
                          f"or changed; train from a version without a head")
    state = torch.load(head, map_location="cpu", weights_only=True)
    if "bias" in state:
        raise ExportError(f"version {version}'s head has a bias; it cannot be composed")
    return np.asarray(state["weight"], dtype=np.float32)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def label_baskets(catalog: Path, field_name: str, index_of: Mapping[str, int]) -> list[list[int]]:
    """Items sharing a catalog label (e.g. subcategory), as extra baskets of positives."""
    groups: dict[str, list[int]] = {}
    for line in catalog.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if row.get(field_name) and row.get("id") in index_of:
                groups.setdefault(str(row[field_name]), []).append(index_of[row["id"]])
    if not groups:
        raise ExportError(f"no item of {catalog} has the field {field_name!r}")
    return list(groups.values())


def build_parser(config: JobsConfig | None = None) -> argparse.ArgumentParser:
    config = config or JobsConfig()
    p = argparse.ArgumentParser(
        prog="visrec-train", description=__doc__.split("\n\n")[1] if __doc__ else None,
        epilog="Then: visrec-export --head OUT/head.pt; visrec-rollout --to <version> --catalog "
               "...; visrec-evaluate <old> <new>.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_service_arguments(p, config, triton=False)
    p.add_argument("--from-version", default=None,
                   help="the version whose item vectors are the features (default: the one "
                        "served)")
    p.add_argument("--repository", type=Path, default=config.repository_path,
                   help="model repository (to compose with the base version's head, if any)")
    p.add_argument("--out", type=Path, default=config.artifacts_path / "train",
                   help="checkpoint.pt, head.pt and train.json go here")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--holdout-percent", type=float, default=20.0,
                   help="users held out for visrec-evaluate (never trained on)")
    p.add_argument("--salt", default=None, help="salt of the user split (visrec-evaluate's)")
    p.add_argument("--user-prefix", default="",
                   help="train on the users whose ids start with this only (visrec-evaluate "
                        "has the same flag)")
    p.add_argument("--label-field", default=None,
                   help="also treat items sharing this catalog field as positives (needs "
                        "--catalog)")
    p.add_argument("--catalog", type=Path, default=config.catalog_path,
                   help="the catalog (VISREC_CATALOG), read for --label-field")
    d = TrainConfig()
    p.add_argument("--dim", type=int, default=d.dim, help="embedding size of the new version")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="pairs per batch (the rest of the batch are the negatives)")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate")
    p.add_argument("--temperature", type=float, default=d.temperature, help="InfoNCE temperature")
    p.add_argument("--max-items-per-user", type=int, default=d.max_items_per_user,
                   help="a user's most recent distinct items that form pairs")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


@dataclass(frozen=True)
class TrainingData:
    ids: list[str]
    features: np.ndarray
    pairs: np.ndarray
    users: int
    events: int
    version: str


def load_training_data(db: Database, version: str | None, percent: float, salt: str,
                       max_items: int, user_prefix: str = "") -> TrainingData:
    """Item vectors of ``items_v<version>`` and pairs from the log of the users that are not
    held out (and whose ids start with ``user_prefix``): a held-out user's items never reach a
    pair."""
    from visrec.export.training.holdout import held_out, items_by_user
    from visrec.gateway.adapters.milvus.schema import items_collection

    if version is None:
        active = db.admin.active_index()
        if active is None:
            raise ExportError("no index is served yet: ingest a catalog first")
        version = active.model_version
    collection = items_collection(version)
    if not db.admin.has_collection(collection):
        raise ExportError(f"no collection {collection}: nothing was embedded with version "
                          f"{version}")
    ids, features = db.admin.item_vectors(collection)
    index_of = {item: n for n, item in enumerate(ids)}
    events = [e for e in db.store.interactions() if e.user_id.startswith(user_prefix)]
    baskets = {u: [index_of[i] for i in items if i in index_of]
               for u, items in items_by_user(events).items() if not held_out(u, percent, salt)}
    pairs = positive_pairs(baskets.values(), max_items)
    return TrainingData(ids, features, pairs, len(baskets), len(events), version)


def run(args: argparse.Namespace, jobs: JobsConfig | None = None) -> Path:
    """Train; returns the path of head.pt. ``jobs``: the configuration the flags override
    (default: read from the environment)."""
    import torch

    from visrec.export.training.holdout import DEFAULT_SALT

    config = TrainConfig(dim=args.dim, epochs=args.epochs, batch_size=args.batch_size,
                         lr=args.lr, temperature=args.temperature,
                         max_items_per_user=args.max_items_per_user, seed=args.seed)
    if config.dim < 1 or config.epochs < 1 or config.batch_size < 2 or config.lr <= 0 \
            or config.temperature <= 0 or config.max_items_per_user < 2:
        raise ExportError("--dim, --epochs >= 1, --batch-size, --max-items-per-user >= 2, "
                          "--lr and --temperature > 0")
    if not 0 <= args.holdout_percent < 100:
        raise ExportError("--holdout-percent must be within [0, 100)")
    salt = args.salt or DEFAULT_SALT
    t0 = time.perf_counter()
    db = with_arguments(jobs or JobsConfig.from_env(), args).milvus()
    try:
        data = load_training_data(db, args.from_version, args.holdout_percent, salt,
                                  config.max_items_per_user, args.user_prefix)
    finally:
        db.close_sync()
    pairs = data.pairs
    if args.label_field:
        if not args.catalog.is_file():
            raise ExportError(f"--catalog {args.catalog} not found (needed by --label-field)")
        index_of = {item: n for n, item in enumerate(data.ids)}
        labelled = positive_pairs(label_baskets(args.catalog, args.label_field, index_of),
                                  config.max_items_per_user)
        pairs = np.concatenate([pairs, labelled])
    head = base_head(args.repository, data.version)
    log.info("version %s: %d items x %d-d; %d events, %d training users, %d positive pairs "
             "(%.1fs)", data.version, len(data.ids), data.features.shape[1], data.events,
             data.users, len(pairs), time.perf_counter() - t0)
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.out / "checkpoint.pt"
    if args.fresh:
        checkpoint.unlink(missing_ok=True)
    result = train_head(data.features, pairs, config, checkpoint, progress=not args.quiet)
    weight = result.weight @ head if head is not None else result.weight
    head_path = args.out / "head.pt"
    _save_atomically(head_path, {"weight": torch.from_numpy(np.ascontiguousarray(weight))})
    (args.out / "train.json").write_text(json.dumps({
        "from_version": data.version, "items": len(data.ids), "events": data.events,
        "training_users": data.users, "pairs": len(pairs),
        "label_field": args.label_field, "holdout_percent": args.holdout_percent,
        "salt": salt, "config": asdict(config), "losses": result.losses,
        "resumed_from_epoch": result.resumed_from, "head": str(head_path),
        "head_shape": list(weight.shape), "seconds": round(time.perf_counter() - t0, 1),
    }, indent=2))
    return head_path


def main(argv: list[str] | None = None) -> int:
    try:
        jobs = JobsConfig.from_env()
    except ConfigError as e:
        print(f"visrec-train: configuration error: {e}", file=sys.stderr)
        return 2
    args = build_parser(jobs).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s",
                        datefmt="%H:%M:%S")
    log.setLevel(logging.WARNING if args.quiet else logging.INFO)
    try:
        head = run(args, jobs)
    except (ExportError, VisrecError) as e:
        print(f"visrec-train: error: {e}", file=sys.stderr)
        return 2
    print(head)
    return 0


if __name__ == "__main__":
    sys.exit(main())
