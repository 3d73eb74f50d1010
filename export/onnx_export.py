"""Torch -> ONNX with a dynamic batch axis, and a parity check against ONNX Runtime."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from visrec.export.backbones import PreprocessSpec
from visrec.export.errors import ExportError
from visrec.export.repository import EMBEDDING, PIXELS

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

MIN_OPSET = 17
DEFAULT_OPSET = 18
PARITY_TOLERANCE = 1e-4


def export_onnx(model: torch.nn.Module, spec: PreprocessSpec, path: Path,
                opset: int = DEFAULT_OPSET) -> None:
    """Export with torch.export (dynamo): dynamic batch, and dynamic height and width where
    the architecture allows (versions of one repository share a config with -1 spatial
    dims); otherwise fixed spatial dims."""
    import torch

    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old; use >= {MIN_OPSET}")
    example = torch.zeros(2, 3, spec.height, spec.width)
    batch = torch.export.Dim("batch", min=1, max=4096)
    height = torch.export.Dim("height", min=32, max=2048)
    width = torch.export.Dim("width", min=32, max=2048)
    program, error = None, None
    for dims in ({0: batch, 2: height, 3: width}, {0: batch}):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                program = torch.onnx.export(
                    model, (example,), input_names=[PIXELS], output_names=[EMBEDDING],
                    dynamic_shapes=(dims,), opset_version=opset, dynamo=True, verbose=False,
                )
                break
            except Exception as e:
                log.info("ONNX export with dynamic dims %s failed: %s", sorted(dims), e)
                error = e
    if program is None:
        raise ExportError(f"ONNX export failed: {type(error).__name__}: {error}") from error
    if program is None:
        raise ExportError("ONNX export returned no program")
    program.save(str(path))


@dataclass(frozen=True)
class Parity:
    images: int
    max_abs_diff: float
    min_cosine: float


def parity_images() -> list[tuple[str, bytes]]:
    """Real photos (scikit-image's sample data), PNG-encoded."""
    import io

    from PIL import Image
    from skimage import data

    out = []
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        buf = io.BytesIO()
        Image.fromarray(getattr(data, name)()).save(buf, format="PNG")
        out.append((name, buf.getvalue()))
    return out


def check_parity(model: torch.nn.Module, onnx_path: Path, spec: PreprocessSpec,
                 images: Iterable[tuple[str, bytes]],
                 tolerance: float = PARITY_TOLERANCE) -> Parity:
    """Run the same preprocessed batch through torch and ONNX Runtime; fail above tolerance."""
    import onnxruntime as ort
    import torch

    from visrec.export.triton_backends import imaging

    batch = np.stack([
        imaging.to_pixels(imaging.decode(data, 10**8), **spec.as_dict())
        for _, data in images
    ]).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(batch)).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got: Any = session.run([EMBEDDING], {PIXELS: batch})[0]
    diff = float(np.abs(got - expected).max())
    cos = float((got * expected).sum(axis=1).min())
    if not diff <= tolerance:  # also catches NaN
        raise ExportError(
            f"ONNX parity failed: max |torch - onnxruntime| = {diff:.2e} > {tolerance}"
        )
    norms = np.linalg.norm(got, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-4):
        raise ExportError(f"exported embeddings are not L2-normalised (norms {norms})")
    return Parity(len(batch), diff, cos)
