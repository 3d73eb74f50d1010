"""visrec-export: backbone -> ONNX (-> TensorRT) -> a new version in the Triton model repository."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from export import repository as repo
from export.backbones import DEFAULT_BACKBONE, DEFAULT_WEIGHTS, PACKAGED_WEIGHTS
from export.errors import ExportError

log = logging.getLogger("visrec.export")
# Default target: the checkout's model_repository/ (images and jobs pass --repository).
SOURCE_REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="visrec-export",
        description=(
            "Export a vision backbone as an L2-normalised image embedder into a Triton model "
            "repository: ONNX with a dynamic batch axis, checked against torch on real photos, "
            "written as image_encoder/<version> atomically (staged, then renamed), together with "
            "the config.pbtxt of preprocess, image_encoder and the image_embedding ensemble. "
            "Running it again with the same backbone, weights and target does nothing."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--backbone", default=DEFAULT_BACKBONE,
                   help="'timm:<arch>' or 'torchvision:<arch>' (e.g. torchvision:resnet18)")
    p.add_argument("--weights", default=DEFAULT_WEIGHTS,
                   help="local checkpoint file (.pth / .pt state dict), or the name of a pip "
                        f"package that ships one: {', '.join(PACKAGED_WEIGHTS)}")
    p.add_argument("--target", choices=repo.TARGETS, default="cpu",
                   help="cpu: python-backend model running ONNX Runtime (the pip Triton build); "
                        "gpu-onnx: Triton's onnxruntime backend with the TensorRT accelerator in "
                        "FP16; gpu-tensorrt: a TensorRT plan (needs TensorRT and a GPU here)")
    p.add_argument("--repository", type=Path, default=SOURCE_REPOSITORY,
                   help="Triton model repository to write into")
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
    p.add_argument("--preprocess-instances", type=int, default=1, help="preprocess instances")
    p.add_argument("--intra-op-threads", type=int, default=0,
                   help="cpu target: ONNX Runtime threads per instance (0 = all cores)")
    p.add_argument("--max-pixels", type=int, default=40_000_000,
                   help="preprocess refuses images with more pixels (decompression bombs)")
    p.add_argument("--crop-pct", type=float, default=None,
                   help="override the backbone's centre crop: the shorter side is resized to "
                        "size / crop-pct before cropping (1.0 keeps the whole image, better for "
                        "catalog cut-outs; default: the backbone's own, 0.875 for "
                        "EfficientNet-Lite0)")
    p.add_argument("--no-fp16", dest="fp16", action="store_false",
                   help="gpu-tensorrt: build the plan in FP32")
    p.add_argument("-q", "--quiet", action="store_true", help="only print errors")
    return p


def _fingerprint(backbone: str, weights_sha256: str, target: str, opset: int,
                 crop_pct: float | None) -> dict[str, Any]:
    return {"backbone": backbone, "weights_sha256": weights_sha256, "target": target,
            "opset": opset, "crop_pct": crop_pct}


def _find_identical(repository: Path, fingerprint: dict[str, Any]) -> int | None:
    for version in reversed(repo.existing_versions(repository)):
        meta = repo.read_metadata(repository, version) or {}
        if all(meta.get(k) == v for k, v in fingerprint.items()):
            return version
    return None


def run(args: argparse.Namespace) -> int:
    """Returns the version now holding the export."""
    from export.backbones import resolve_weights, sha256_file

    opts = repo.ServingOptions(
        max_batch_size=args.max_batch_size, max_queue_delay_us=args.max_queue_delay_us,
        encoder_instances=args.instances, preprocess_instances=args.preprocess_instances,
        intra_op_threads=args.intra_op_threads, max_pixels=args.max_pixels,
    )
    if args.version is not None and args.version < 1:
        raise ExportError("--version must be >= 1")
    if args.opset < 17:
        raise ExportError("--opset must be >= 17")
    if args.crop_pct is not None and not 0.1 <= args.crop_pct <= 1.0:
        raise ExportError("--crop-pct must be within [0.1, 1.0]")
    if args.target == "gpu-tensorrt":
        from export.tensorrt_engine import tensorrt_available

        reason = tensorrt_available()
        if reason is not None:  # fail before minutes of work, not after
            raise ExportError(
                f"--target gpu-tensorrt needs TensorRT and an NVIDIA GPU: {reason}. "
                "Run it on a GPU node, or use --target gpu-onnx."
            )
    repository: Path = args.repository.resolve()
    repository.mkdir(parents=True, exist_ok=True)
    weights_sha = sha256_file(resolve_weights(args.weights))
    fingerprint = _fingerprint(args.backbone, weights_sha, args.target, args.opset,
                               args.crop_pct)

    existing = _find_identical(repository, fingerprint)
    if existing is not None and (args.version in (None, existing)) and not args.force:
        meta = repo.read_metadata(repository, existing) or {}
        log.info("image_encoder/%d already holds this export; nothing to rebuild", existing)
        _write_configs(repository, args.target, meta, opts)
        return existing

    version = args.version or (max(repo.existing_versions(repository), default=0) + 1)
    t0 = time.perf_counter()
    from export.backbones import build_backbone, embedding_model
    from export.onnx_export import check_parity, export_onnx, parity_images

    log.info("building %s with weights %s", args.backbone, args.weights)
    backbone = build_backbone(args.backbone, args.weights, args.crop_pct)
    model = embedding_model(backbone)

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
            from export.tensorrt_engine import build_engine

            log.info("building the TensorRT plan (%s)", "FP16" if args.fp16 else "FP32")
            build_engine(onnx_path, staging / "model.plan", backbone.preprocess,
                         max_batch=opts.max_batch_size, opt_batch=min(16, opts.max_batch_size),
                         fp16=args.fp16)
            onnx_path.unlink()
        return {
            **fingerprint,
            "version": version,
            "weights": backbone.weights,
            "dim": backbone.feature_dim,
            "preprocess": backbone.preprocess.as_dict(),
            "parity": {"images": parity.images, "max_abs_diff": parity.max_abs_diff,
                       "min_cosine": parity.min_cosine},
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }

    final = repo.write_version_atomically(repository, version, fill, replace=args.force)
    meta = repo.read_metadata(repository, version) or {}
    _write_configs(repository, args.target, meta, opts)
    log.info("wrote %s (%d-d embeddings) in %.1fs", final, meta.get("dim", 0),
             time.perf_counter() - t0)
    return version


def _write_configs(repository: Path, target: str, meta: dict[str, Any],
                   opts: repo.ServingOptions) -> None:
    from export.backbones import PreprocessSpec

    p = meta["preprocess"]
    spec = PreprocessSpec(p["height"], p["width"], p["resize_shorter"], p["interpolation"],
                          tuple(p["mean"]), tuple(p["std"]))
    for other in repo.existing_versions(repository):
        other_meta = repo.read_metadata(repository, other) or {}
        if other_meta.get("preprocess", p) != p:
            log.warning("image_encoder/%d was exported with different preprocessing (%s); the "
                        "shared preprocess model now serves %s", other,
                        other_meta.get("preprocess"), p)
    repo.write_preprocess_model(repository)
    repo.write_config(repository, repo.preprocess_config(spec, opts))
    repo.write_config(repository, repo.encoder_config(target, meta["dim"], spec, opts))
    repo.write_config(repository, repo.ensemble_config(meta["dim"], opts))
    (repository / repo.ENSEMBLE / "1").mkdir(parents=True, exist_ok=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s",
                        datefmt="%H:%M:%S")
    log.setLevel(logging.ERROR if args.quiet else logging.INFO)
    try:
        version = run(args)
    except ExportError as e:
        print(f"visrec-export: error: {e}", file=sys.stderr)
        return 2
    print(version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
