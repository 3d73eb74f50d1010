"""visrec-export: backbone -> ONNX (-> TensorRT) -> a new version in the Triton model repository."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from visrec.export import repository as repo
from visrec.export.backbones import DEFAULT_BACKBONE, DEFAULT_WEIGHTS, PACKAGED_WEIGHTS
from visrec.export.config import JobsConfig
from visrec.export.errors import ExportError, UsageError
from visrec.export.job import Job

log = logging.getLogger("visrec.export")


DESCRIPTION = (
    "Export a vision backbone as an L2-normalised image embedder into a Triton model "
    "repository: ONNX with a dynamic batch axis, checked against torch on real photos, "
    "written as image_encoder/<version> atomically (staged, then renamed), together with "
    "the config.pbtxt of preprocess, image_encoder and the image_embedding pipeline. "
    "Running it again with the same backbone, weights and target does nothing. Prints the "
    "version that holds the export."
)


def _arguments(p: argparse.ArgumentParser, config: JobsConfig) -> None:
    p.add_argument("--backbone", default=DEFAULT_BACKBONE,
                   help="'timm:<arch>' or 'torchvision:<arch>' (e.g. torchvision:resnet18)")
    p.add_argument("--weights", default=DEFAULT_WEIGHTS,
                   help="local checkpoint file (.pth / .pt state dict), or the name of a pip "
                        f"package that ships one: {', '.join(PACKAGED_WEIGHTS)}")
    p.add_argument("--target", choices=repo.TARGETS, default="cpu",
                   help="cpu: python-backend model running ONNX Runtime (the pip Triton build); "
                        "gpu-onnx: Triton's onnxruntime backend with the TensorRT accelerator in "
                        "FP16; gpu-tensorrt: a TensorRT plan (needs TensorRT and a GPU here)")
    p.add_argument("--repository", type=Path, default=config.repository_path,
                   help="Triton model repository to write into (VISREC_MODEL_REPOSITORY)")
    p.add_argument("--version", type=int, default=None,
                   help="version number to write (default: reuse an identical existing export, "
                        "else the highest existing version + 1)")
    p.add_argument("--force", action="store_true",
                   help="replace the version folder if it exists with a different export")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17)")
    p.add_argument("--parity-tolerance", type=float, default=1e-4,
                   help="max |torch - onnxruntime| allowed on the parity photos")
    p.add_argument("--max-batch-size", type=int, default=64,
                   help="Triton max_batch_size of all three models")
    p.add_argument("--max-queue-delay-us", type=int, default=2000,
                   help="dynamic batching: how long Triton may wait to fill a batch")
    p.add_argument("--instances", type=int, default=1, help="encoder instances")
    p.add_argument("--preprocess-instances", type=int, default=2,
                   help="instances of preprocess and of image_embedding (they decode in "
                   "parallel; 2 measured +44%% image_embedding throughput on 2 cores)")
    p.add_argument("--intra-op-threads", type=int, default=0,
                   help="cpu target: ONNX Runtime threads per instance (0 = all cores for "
                   "image_encoder; the cores shared out among image_embedding's instances, "
                   "which run the encoder in-process)")
    d = repo.ServingOptions()
    p.add_argument("--ort-batch", type=int, default=d.ort_batch,
                   help="cpu target: ONNX Runtime runs a dynamic batch in slices of this many "
                   "images (small batches are faster per image on a CPU)")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels,
                   help="images with more pixels are refused before decoding (decompression "
                        "bombs; a PNG is decoded whole: this bounds its memory)")
    p.add_argument("--max-aspect-ratio", type=float, default=d.max_aspect_ratio,
                   help="images whose longer side is more times the shorter are refused")
    p.add_argument("--min-side", type=int, default=d.min_side,
                   help="images whose shorter side has fewer pixels are refused")
    p.add_argument("--head", type=Path, default=None,
                   help="a projection head applied to the backbone's features before the L2 "
                        "normalisation: a torch state dict with 'weight' [out, in] and "
                        "optionally 'bias' [out] (what visrec-train writes)")
    p.add_argument("--crop-pct", type=float, default=None,
                   help="centre crop: the shorter side is resized to size / crop-pct before "
                        "cropping. Default 1.0, the whole picture, which measured best on "
                        "catalog images (python -m bench.heads: cross-vendor hit@10 0.697 vs "
                        "0.669); 0.875 is EfficientNet-Lite0's ImageNet crop. With --head, the "
                        "default is the crop of the version the head was trained from "
                        "(train.json beside it): a head must see the inputs it learnt on")
    p.add_argument("--no-fp16", dest="fp16", action="store_false",
                   help="gpu-tensorrt: build the plan in FP32")


def _fingerprint(backbone: str, weights_sha256: str, target: str, opset: int,
                 crop_pct: float | None, head_sha256: str | None) -> dict[str, Any]:
    return {"backbone": backbone, "weights_sha256": weights_sha256, "target": target,
            "opset": opset, "crop_pct": crop_pct, "head_sha256": head_sha256}


def _find_identical(repository: Path, fingerprint: dict[str, Any]) -> int | None:
    for version in reversed(repo.existing_versions(repository)):
        meta = repo.read_metadata(repository, version) or {}
        if all(meta.get(k) == v for k, v in fingerprint.items()):
            return version
    return None


DEFAULT_CROP_PCT = 1.0


def _default_crop(args: argparse.Namespace) -> float | None:
    """1.0, or with --head the crop of the version whose vectors trained it (None: that
    version used the backbone's own, as exports before 1.0 became the default did)."""
    if args.head is None:
        return DEFAULT_CROP_PCT
    trained = args.head.parent / "train.json"
    try:
        base = int(json.loads(trained.read_text())["from_version"])
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("%s not found or unreadable: exporting the head with --crop-pct %s; pass "
                    "the crop of the version it was trained from if that differs", trained,
                    DEFAULT_CROP_PCT)
        return DEFAULT_CROP_PCT
    meta = repo.read_metadata(args.repository.resolve(), base)
    if meta is None:
        raise ExportError(f"the head was trained from version {base} ({trained}), which "
                          f"{args.repository} does not hold: pass --crop-pct")
    crop = meta.get("crop_pct")
    return float(crop) if crop is not None else None


def run(args: argparse.Namespace) -> int:
    """Returns the version now holding the export."""
    from visrec.export.backbones import resolve_weights, sha256_file

    opts = repo.ServingOptions(
        max_batch_size=args.max_batch_size, max_queue_delay_us=args.max_queue_delay_us,
        encoder_instances=args.instances, preprocess_instances=args.preprocess_instances,
        intra_op_threads=args.intra_op_threads, ort_batch=args.ort_batch,
        max_pixels=args.max_pixels,
        max_aspect_ratio=args.max_aspect_ratio, min_side=args.min_side,
    )
    if args.version is not None and args.version < 1:
        raise UsageError("--version must be >= 1")
    if args.opset < 17:
        raise UsageError("--opset must be >= 17")
    if args.crop_pct is not None and not 0.1 <= args.crop_pct <= 1.0:
        raise UsageError("--crop-pct must be within [0.1, 1.0]")
    crop_pct = args.crop_pct if args.crop_pct is not None else _default_crop(args)
    if args.target == "gpu-tensorrt":
        from visrec.export.tensorrt_engine import tensorrt_available

        reason = tensorrt_available()
        if reason is not None:  # fail before minutes of work, not after
            raise ExportError(
                f"--target gpu-tensorrt needs TensorRT and an NVIDIA GPU: {reason}. "
                "Run it on a GPU node, or use --target gpu-onnx."
            )
    if args.head is not None and not args.head.is_file():
        raise UsageError(f"--head {args.head}: no such file")
    repository: Path = args.repository.resolve()
    repository.mkdir(parents=True, exist_ok=True)
    # One config.pbtxt serves every version of image_encoder: one target per repository.
    for other in repo.existing_versions(repository):
        other_target = (repo.read_metadata(repository, other) or {}).get("target", args.target)
        if other_target != args.target:
            raise ExportError(
                f"image_encoder/{other} was exported for target {other_target}; every version "
                f"of a repository shares one config: export with --target {other_target}, or "
                "into another --repository")
    weights_sha = sha256_file(resolve_weights(args.weights))
    head_sha = sha256_file(args.head) if args.head is not None else None
    fingerprint = _fingerprint(args.backbone, weights_sha, args.target, args.opset,
                               crop_pct, head_sha)

    existing = _find_identical(repository, fingerprint)
    if existing is not None and (args.version in (None, existing)) and not args.force:
        meta = repo.read_metadata(repository, existing) or {}
        log.info("image_encoder/%d already holds this export; nothing to rebuild", existing)
        _write_companions(repository, existing, meta)
        _write_configs(repository, args.target, opts, existing)
        return existing

    version = args.version or (max(repo.existing_versions(repository), default=0) + 1)
    t0 = time.perf_counter()
    from visrec.export.backbones import build_backbone, embedding_model
    from visrec.export.onnx_export import check_parity, export_onnx, parity_images

    log.info("building %s with weights %s", args.backbone, args.weights)
    backbone = build_backbone(args.backbone, args.weights, crop_pct)
    head = load_head(args.head, backbone.feature_dim) if args.head is not None else None
    model = embedding_model(backbone, head)
    dim = head.out_features if head is not None else backbone.feature_dim

    def fill(staging: Path) -> dict[str, Any]:
        onnx_path = staging / "model.onnx"
        log.info("exporting ONNX (opset %d, dynamic batch)", args.opset)
        export_onnx(model, backbone.preprocess, onnx_path, args.opset)
        parity = check_parity(model, onnx_path, backbone.preprocess, parity_images(),
                              args.parity_tolerance)
        log.info("parity on %d photos: max |torch - onnxruntime| = %.2e", parity.images,
                 parity.max_abs_diff)
        if args.target == "cpu":
            shutil.copyfile(repo.ORT_ENCODER_SOURCE, staging / "model.py")
        elif args.target == "gpu-tensorrt":
            from visrec.export.tensorrt_engine import build_engine

            log.info("building the TensorRT plan (%s)", "FP16" if args.fp16 else "FP32")
            build_engine(onnx_path, staging / "model.plan", backbone.preprocess,
                         max_batch=opts.max_batch_size, opt_batch=min(16, opts.max_batch_size),
                         fp16=args.fp16)
            onnx_path.unlink()
        return {
            **fingerprint,
            "version": version,
            "weights": backbone.weights,
            "head": str(args.head) if args.head is not None else None,
            "dim": dim,
            "preprocess": backbone.preprocess.as_dict(),
            "parity": {"images": parity.images, "max_abs_diff": parity.max_abs_diff,
                       "min_cosine": parity.min_cosine},
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }

    final = repo.write_version_atomically(repository, version, fill, replace=args.force)
    meta = repo.read_metadata(repository, version) or {}
    _write_companions(repository, version, meta)
    _write_configs(repository, args.target, opts, version)
    log.info("wrote %s (%d-d embeddings) in %.1fs", final, meta.get("dim", 0),
             time.perf_counter() - t0)
    return version


def _write_companions(repository: Path, version: int, meta: dict[str, Any]) -> None:
    """preprocess/<N> and image_embedding/<N>, with version N's own preprocessing."""
    from visrec.export.backbones import PreprocessSpec

    p = meta["preprocess"]
    spec = PreprocessSpec(p["height"], p["width"], p["resize_shorter"], p["interpolation"],
                          tuple(p["mean"]), tuple(p["std"]))
    repo.write_python_version(repository, repo.PREPROCESS, version, spec)
    repo.write_python_version(repository, repo.PIPELINE, version, spec)


def _write_configs(repository: Path, target: str, opts: repo.ServingOptions,
                   version: int) -> None:
    """The three configs; a new repository serves ``version``, an existing one keeps serving
    what it serves (visrec-rollout makes a new version served)."""
    for config in (repo.preprocess_config(opts), repo.encoder_config(target, opts),
                   repo.pipeline_config(opts, target)):
        repo.write_config(repository, config, serve=[version])


def load_head(path: Path, in_features: int) -> Any:
    """A Linear projection head from a state dict {'weight': [out, in], 'bias'?: [out]}."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ExportError(f"cannot read head {path}: {e}") from e
    weight = state.get("weight") if isinstance(state, dict) else None
    if weight is None or weight.dim() != 2:
        raise ExportError(f"head {path} needs a 2-d 'weight' tensor [out, in]")
    if weight.shape[1] != in_features:
        raise ExportError(f"head {path} takes {weight.shape[1]} features; the backbone gives "
                          f"{in_features}")
    head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in state)
    head.load_state_dict({k: v for k, v in state.items() if k in ("weight", "bias")})
    return head.eval()


def _run(args: argparse.Namespace, config: JobsConfig) -> None:
    print(run(args))


JOB = Job(prog="visrec-export", description=DESCRIPTION, add_arguments=_arguments, run=_run,
          next_steps="Then: visrec-rollout --to <version> --catalog ... serves it.")
build_parser = JOB.parser
main = JOB.main


if __name__ == "__main__":
    sys.exit(main())
