"""Cheap checks on uploaded image bytes before they are sent to Triton (header only).

The limits are the model's: they travel in image_embedding's config (max_pixels,
max_aspect_ratio, min_side, written by visrec-export), and Triton's decoder
(export/triton_backends/imaging.py, which cannot import this package) applies the same rule, so
the gateway refuses early exactly what Triton would refuse (a test checks both agree).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from visrec.platform.errors import InvalidArgument

ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP"})


@dataclass(frozen=True)
class ImageLimits:
    max_pixels: int = 16_000_000
    max_aspect_ratio: float = 20.0
    min_side: int = 8

    @classmethod
    def from_parameters(cls, params: Mapping[str, str], ceiling: int) -> ImageLimits:
        """A model config's parameters; the gateway's own pixel limit caps the model's."""
        d = cls()
        return cls(min(int(params.get("max_pixels", d.max_pixels)), ceiling),
                   float(params.get("max_aspect_ratio", d.max_aspect_ratio)),
                   int(params.get("min_side", d.min_side)))

    def problem(self, w: int, h: int) -> str | None:
        """Why a w x h image is refused, or None (imaging.shape_problem's rule)."""
        if w * h > self.max_pixels:
            return f"image is {w}x{h} = {w * h} pixels, more than the limit of {self.max_pixels}"
        if min(w, h) < self.min_side:
            return (f"image is {w}x{h}: its shorter side is under the minimum of "
                    f"{self.min_side} pixels")
        if max(w, h) > self.max_aspect_ratio * min(w, h):
            return (f"image is {w}x{h}: one side is {max(w, h) / min(w, h):.0f} times the "
                    f"other, more than the limit of {self.max_aspect_ratio:g}")
        return None


def check_image(data: bytes, *, max_bytes: int,
                limits: ImageLimits = ImageLimits()) -> tuple[str, int, int]:
    """(format, width, height) of an acceptable image; InvalidArgument otherwise.

    Reads the header only, so a decompression bomb is refused before any pixel is decoded.
    A file whose body is corrupt passes here and is refused by Triton's preprocessing.
    """
    if not data:
        raise InvalidArgument("image is empty")
    if len(data) > max_bytes:
        raise InvalidArgument(f"image is {len(data)} bytes; the limit is {max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt, (w, h) = img.format or "", img.size
    except UnidentifiedImageError as e:
        raise InvalidArgument(
            "image is not in a recognised format (JPEG, PNG, WebP, GIF, BMP)"
        ) from e
    except Image.DecompressionBombError as e:
        raise InvalidArgument(f"image is too large: {e}") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise InvalidArgument(f"image header is corrupt: {e}") from e
    if fmt not in ACCEPTED_FORMATS:
        raise InvalidArgument(f"image format {fmt or 'unknown'} is not accepted; use JPEG or PNG")
    if w <= 0 or h <= 0:
        raise InvalidArgument("image has no pixels")
    problem = limits.problem(w, h)
    if problem:
        raise InvalidArgument(problem)
    return fmt, w, h
