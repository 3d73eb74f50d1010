"""visrec-train: fine-tune a projection head on what users click together and on which pictures
show the same product.

ImageNet features know what things look like, not what our users consider alike nor which two
pictures show one product. This job reads the interaction log and the item vectors of a served
version (both from Milvus: the vectors are what Triton computed for ``items_v<N>``), and trains a
linear projection head with a symmetric InfoNCE (contrastive) loss: two items one user interacted
with are a positive pair, and with ``--group-by`` two items of one catalog group (the same
product); the other items of the batch are the negatives. Users and groups held out for
``visrec-evaluate`` (the same hash split) are never read.

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
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visrec.export.config import (
    JobsConfig,
    add_service_arguments,
    add_setting_flags,
    with_arguments,
)
from visrec.export.errors import ExportError, UsageError
from visrec.export.job import Job, progress_bar
from visrec.export.training.data import load_training_data, with_groups
from visrec.export.training.holdout import catalog_groups

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
    group_weight: float = 2.0  # the catalog loss's weight, next to the interaction loss


@dataclass
class TrainResult:
    weight: np.ndarray  # [dim, in_features]
    losses: list[float] = field(default_factory=list)
    resumed_from: int = 0


def pca_init(features: np.ndarray, dim: int) -> np.ndarray:
    """The top ``dim`` principal directions: at epoch 0 the head keeps what the features keep."""
    centred = features - features.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    if dim > vt.shape[0]:
        raise ExportError(f"--dim {dim} exceeds the {vt.shape[0]} directions the features have")
    return np.ascontiguousarray(vt[:dim], dtype=np.float32)


def _fingerprint(config: TrainConfig, features: np.ndarray, pairs: np.ndarray,
                 grouped: np.ndarray) -> str:
    """What a checkpoint must match to be resumed (more epochs may be asked for)."""
    settings = {k: v for k, v in asdict(config).items() if k != "epochs"}
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    h.update(features.tobytes())
    h.update(pairs.tobytes())
    h.update(grouped.tobytes())
    return h.hexdigest()


def _info_nce(x: Any, weight: Any, idx: Any, temperature: float) -> Any:
    """Symmetric InfoNCE of a batch of positive pairs; the other pairs are the negatives."""
    import torch

    a = torch.nn.functional.normalize(x[idx[:, 0]] @ weight.T, dim=1)
    p = torch.nn.functional.normalize(x[idx[:, 1]] @ weight.T, dim=1)
    logits = a @ p.T / temperature
    labels = torch.arange(len(a))
    # An item twice in a batch would be its own negative: mask those off-diagonal cells (also
    # an anchor that is another row's positive: catalog pairs come in both orders).
    same = ((idx[:, 0][None, :] == idx[:, 0][:, None])
            | (idx[:, 1][None, :] == idx[:, 1][:, None])
            | (idx[:, 0][:, None] == idx[:, 1][None, :]))
    same &= ~torch.eye(len(a), dtype=torch.bool)
    logits = logits.masked_fill(same, float("-inf"))
    return (torch.nn.functional.cross_entropy(logits, labels)
            + torch.nn.functional.cross_entropy(logits.T, labels)) / 2


def train_head(features: np.ndarray, pairs: np.ndarray, config: TrainConfig,
               checkpoint: Path | None = None, progress: bool = True,
               on_epoch: Callable[[int, float], None] | None = None,
               grouped: np.ndarray | None = None) -> TrainResult:
    """Train W ([dim, in]) with symmetric InfoNCE over ``pairs`` (row indices of ``features``).
    With ``grouped`` (catalog pairs), every step adds ``group_weight`` x the InfoNCE of a batch
    of those (half a batch): the two kinds never share a batch, so neither drowns the other; an
    epoch is one pass over the larger set, the smaller one cycles. With ``checkpoint``, state is
    saved after every epoch and a run with the same inputs and config resumes from it."""
    import torch
    if len(pairs) == 0:
        raise ExportError("no positive pairs: no user interacted with two or more items")
    torch.manual_seed(config.seed)
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    weight = torch.nn.Parameter(torch.from_numpy(pca_init(features, config.dim)))
    opt = torch.optim.Adam([weight], lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    grouped = np.zeros((0, 2), dtype=np.int64) if grouped is None else grouped
    fingerprint = _fingerprint(config, features, pairs, grouped)
    group_t = torch.from_numpy(grouped.astype(np.int64)) if len(grouped) > 1 else None
    group_batch = max(2, config.batch_size // 2)
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
        # An epoch passes once over the larger of the two pair sets; the other one cycles.
        n_steps = -(-len(pair_t) // config.batch_size)
        if group_t is not None:
            n_steps = max(n_steps, -(-len(group_t) // group_batch))
            group_order = _cycled(len(group_t), n_steps * group_batch, gen)
        order = _cycled(len(pair_t), n_steps * config.batch_size, gen)
        total, batches = 0.0, 0
        bar = progress_bar(range(n_steps), unit="batch", leave=False,
                           desc=f"epoch {epoch + 1}/{config.epochs}", enabled=progress)
        for n in bar:
            idx = pair_t[order[n * config.batch_size:(n + 1) * config.batch_size]]
            if len(idx) < 2:
                continue
            loss = _info_nce(x, weight, idx, config.temperature)
            if group_t is not None:
                g = group_t[group_order[n * group_batch:(n + 1) * group_batch]]
                loss = loss + config.group_weight * _info_nce(x, weight, g, config.temperature)
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


def _cycled(n: int, length: int, gen: Any) -> Any:
    """``length`` indices into ``n`` items: whole random permutations, one after another (the
    last one cut), so every item comes once before any comes twice."""
    import torch

    rounds = max(1, -(-length // n))
    return torch.cat([torch.randperm(n, generator=gen) for _ in range(rounds)])[:length]


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


def _arguments(p: argparse.ArgumentParser, config: JobsConfig) -> None:
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
    p.add_argument("--group-by", default=None, metavar="FIELD",
                   help="also learn from the catalog: items sharing this field are pictures of "
                        "one product and positives (e.g. unified in the demo, a product id in a "
                        "shop); --holdout-percent of the groups are held out like users, and "
                        "their items are never read")
    p.add_argument("--group-weight", type=float, default=TrainConfig.group_weight,
                   help="with --group-by and interactions: the weight of the catalog's loss "
                        "(each step: a batch of interaction pairs and half a batch of catalog "
                        "pairs)")
    p.add_argument("--catalog-only", action="store_true",
                   help="with --group-by: learn from the catalog's groups alone, no "
                        "interactions (an epoch is one pass over the catalog pairs)")
    add_setting_flags(p, config, ("catalog",))
    d = TrainConfig()
    p.add_argument("--dim", type=int, default=d.dim, help="embedding size of the new version")
    p.add_argument("--epochs", type=int, default=d.epochs, help="passes over the pairs")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="pairs per batch (the rest of the batch are the negatives)")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate")
    p.add_argument("--temperature", type=float, default=d.temperature, help="InfoNCE temperature")
    p.add_argument("--max-items-per-user", type=int, default=d.max_items_per_user,
                   help="a user's most recent distinct items that form pairs")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the initial weights and "
                   "the batches")


def run(args: argparse.Namespace, jobs: JobsConfig | None = None) -> Path:
    """Train; returns the path of head.pt. ``jobs``: the configuration the flags override
    (default: read from the environment)."""
    import torch

    from visrec.export.training.holdout import DEFAULT_SALT

    config = TrainConfig(dim=args.dim, epochs=args.epochs, batch_size=args.batch_size,
                         lr=args.lr, temperature=args.temperature,
                         max_items_per_user=args.max_items_per_user, seed=args.seed,
                         group_weight=args.group_weight)
    if config.dim < 1 or config.epochs < 1 or config.batch_size < 2 or config.lr <= 0 \
            or config.temperature <= 0 or config.max_items_per_user < 2:
        raise UsageError("--dim, --epochs >= 1, --batch-size, --max-items-per-user >= 2, "
                         "--lr and --temperature > 0")
    if not 0 <= args.holdout_percent < 100:
        raise UsageError("--holdout-percent must be within [0, 100)")
    if not args.group_weight > 0:  # nan too
        raise UsageError("--group-weight must be > 0")
    if args.catalog_only and not args.group_by:
        raise UsageError("--catalog-only needs --group-by (the field that groups pictures)")
    salt = args.salt or DEFAULT_SALT
    t0 = time.perf_counter()
    db = with_arguments(jobs or JobsConfig.from_env(), args).milvus()
    try:
        data = load_training_data(db, args.from_version, args.holdout_percent, salt,
                                  config.max_items_per_user, args.user_prefix)
    finally:
        db.close_sync()
    held_groups = 0
    grouped, pairs = np.zeros((0, 2), dtype=np.int64), data.pairs
    if args.group_by:
        groups = catalog_groups(args.catalog, args.group_by)
        data, grouped, held_groups = with_groups(data, groups, args.holdout_percent, salt,
                                                 config.max_items_per_user)
        if not args.catalog_only and len(data.pairs) == 0:
            log.info("no interaction pairs: learning from the catalog's groups alone")
        pairs = grouped if args.catalog_only or len(data.pairs) == 0 else data.pairs
    head = base_head(args.repository, data.version)
    log.info("version %s: %d items x %d-d; %d events, %d training users, %d interaction pairs, "
             "%d catalog pairs (%d groups held out) (%.1fs)", data.version, len(data.ids),
             data.features.shape[1], data.events, data.users, len(data.pairs), len(grouped),
             held_groups, time.perf_counter() - t0)
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.out / "checkpoint.pt"
    if args.fresh:
        checkpoint.unlink(missing_ok=True)
    mixed = grouped if args.group_by and pairs is not grouped else None
    result = train_head(data.features, pairs, config, checkpoint, progress=not args.quiet,
                        grouped=mixed)
    weight = result.weight @ head if head is not None else result.weight
    head_path = args.out / "head.pt"
    _save_atomically(head_path, {"weight": torch.from_numpy(np.ascontiguousarray(weight))})
    (args.out / "train.json").write_text(json.dumps({
        "from_version": data.version, "items": len(data.ids), "events": data.events,
        "training_users": data.users, "pairs": len(data.pairs),
        "group_by": args.group_by, "group_pairs": len(grouped), "held_out_groups": held_groups,
        "catalog_only": args.catalog_only,
        "holdout_percent": args.holdout_percent,
        "salt": salt, "config": asdict(config), "losses": result.losses,
        "resumed_from_epoch": result.resumed_from, "head": str(head_path),
        "head_shape": list(weight.shape), "seconds": round(time.perf_counter() - t0, 1),
    }, indent=2))
    return head_path


def _run(args: argparse.Namespace, config: JobsConfig) -> None:
    print(run(args, config))


JOB = Job(prog="visrec-train", description=__doc__.split("\n\n")[1] if __doc__ else "",
          add_arguments=_arguments, run=_run,
          next_steps="Then: visrec-export --head OUT/head.pt; visrec-rollout --to <version> "
                     "--catalog ...; visrec-evaluate <old> <new>.",
          quiet_help="no progress bars: warnings and errors only")
build_parser = JOB.parser
main = JOB.main


if __name__ == "__main__":
    sys.exit(main())
