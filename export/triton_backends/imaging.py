"""Decode encoded images and turn them into a backbone's FP32 CHW input.

Pure numpy + Pillow, no Triton imports: the preprocess model uses it inside Triton and the tests
import it directly. It reproduces timm's / torchvision's eval transform on PIL images
(resize the shorter side, centre crop, scale to [0, 1], normalise).

Every image costs work bounded by what the model needs, whatever its header says: the limits
(pixels, sides' ratio, shortest side) are checked on the header, before anything is decoded; a
JPEG much larger than the model's input is decoded at a reduced scale (DCT scaling); only the
first frame of an animation is decoded; and a picture much wider or taller than the crop is
cropped before it is resized. Photos of ordinary size take the exact eval transform.
"""

from __future__ import annotations

import functools
import io
import math
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
# Transparent pixels become white: catalog cut-outs (emoji, product shots) sit on white.
BACKGROUND = (255, 255, 255)
# Shapes no picture has (a 16000x1 PNG is 131 bytes; resized naively it was a 4096000x256
# intermediate). The defaults of the model's config parameters (repository.ServingOptions).
MAX_PIXELS = 16_000_000
MAX_ASPECT_RATIO = 20.0
MIN_SIDE = 8


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image, or one too large to decode safely."""


def shape_problem(w: int, h: int, max_pixels: int = MAX_PIXELS,
                  max_aspect: float = MAX_ASPECT_RATIO, min_side: int = MIN_SIDE) -> str | None:
    """Why a w x h image is refused before decoding, or None. (The gateway's header check
    applies the same rule with the same limits, read from the model's config.)"""
    if w * h > max_pixels:
        return f"image is {w}x{h} = {w * h} pixels, more than the limit of {max_pixels}"
    if min(w, h) < min_side:
        return f"image is {w}x{h}: its shorter side is under the minimum of {min_side} pixels"
    if max(w, h) > max_aspect * min(w, h):
        return (f"image is {w}x{h}: one side is {max(w, h) / min(w, h):.0f} times the other, "
                f"more than the limit of {max_aspect:g}")
    return None


def decode(data: bytes, max_pixels: int = MAX_PIXELS, *, max_aspect: float = MAX_ASPECT_RATIO,
           min_side: int = MIN_SIDE, shorter_side: int | None = None) -> Image.Image:
    """Encoded bytes -> an RGB image, upright (EXIF orientation), alpha composited on white.
    With ``shorter_side`` (what the transform resizes the shorter side to), a JPEG at least
    twice that size is decoded at a reduced scale that keeps the shorter side >= it."""
    if not data:
        raise ImageDecodeError("empty image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            w, h = img.size
            problem = shape_problem(w, h, max_pixels, max_aspect, min_side)
            if problem:
                raise ImageDecodeError(problem)
            scale = min(1.0, shorter_side / min(w, h)) if shorter_side else 1.0
            # JPEG: decode straight to RGB, at 1/2, 1/4 or 1/8 scale when that still covers
            # the target (other formats ignore it). Only frame 0 of an animation is loaded.
            img.draft("RGB", (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))))
            img.load()
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as e:
        raise ImageDecodeError("not a recognised image format") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(f"image is too large: {e}") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageDecodeError(f"cannot decode image: {e}") from e
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, BACKGROUND)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits before RGB (Pillow would clip instead).
        arr = np.asarray(img, dtype=np.float32)
        peak = max(float(arr.max()), 1.0)
        img = Image.fromarray((arr * (255.0 / max(peak, 255.0))).astype(np.uint8))
    return img.convert("RGB")


def to_pixels(
    img: Image.Image,
    *,
    height: int,
    width: int,
    resize_shorter: int,
    interpolation: str,
    mean: Sequence[float],
    std: Sequence[float],
) -> np.ndarray:
    """RGB image -> FP32 (3, height, width), as timm's eval transform computes it."""
    return normalise(resized_crop(img, height=height, width=width, resize_shorter=resize_shorter,
                                  interpolation=interpolation), mean, std)


def resized_crop(img: Image.Image, *, height: int, width: int, resize_shorter: int,
                 interpolation: str) -> Image.Image:
    """The eval transform's geometry: resize the shorter side, centre crop (height x width)."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = resize_shorter, int(resize_shorter * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if new_w >= width and new_h >= height and new_w * new_h > 4 * width * height:
        # Far wider or taller than the crop: resize only the source region the crop keeps
        # (the same window, without the intermediate; at most one grey level apart).
        top, left = round((new_h - height) / 2.0), round((new_w - width) / 2.0)
        sx, sy = w / new_w, h / new_h
        return img.resize((width, height), RESAMPLE[interpolation],
                          box=(left * sx, top * sy, (left + width) * sx, (top + height) * sy))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), RESAMPLE[interpolation])
    if new_w < width or new_h < height:  # crop larger than the image: pad like torchvision
        padded = Image.new("RGB", (max(new_w, width), max(new_h, height)), (0, 0, 0))
        padded.paste(img, ((padded.width - new_w) // 2, (padded.height - new_h) // 2))
        img, (new_w, new_h) = padded, padded.size
    top = round((new_h - height) / 2.0)
    left = round((new_w - width) / 2.0)
    return img.crop((left, top, left + width, top + height))


def normalise(img: Image.Image, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """HWC uint8 RGB -> CHW FP32, scaled to [0, 1] and normalised: each channel through a
    256-entry table computed with the same float32 operations as (x / 255 - mean) / std, so
    bit-identical to it, in one gather per channel instead of four passes (6x faster)."""
    table = _levels(tuple(mean), tuple(std))
    arr = np.asarray(img)
    out = np.empty((3, *arr.shape[:2]), np.float32)
    for c in range(3):
        np.take(table[c], arr[:, :, c], out=out[c])
    return out


@functools.lru_cache(maxsize=8)
def _levels(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    levels = np.arange(256, dtype=np.float32)[None, :] * np.float32(1.0 / 255.0)
    return (levels - np.asarray(mean, np.float32)[:, None]) / np.asarray(std, np.float32)[:, None]


SPEC_FILE = "preprocess.json"
SPEC_KEYS = ("height", "width", "resize_shorter", "interpolation", "mean", "std")


def load_spec(version_dir: str) -> dict[str, Any]:
    """The preprocessing of one model version, written by visrec-export beside its model."""
    import json
    import os

    with open(os.path.join(version_dir, SPEC_FILE)) as f:
        spec = json.load(f)
    return {k: spec[k] for k in SPEC_KEYS}


def limits_of(params: Mapping[str, str]) -> dict[str, Any]:
    """decode()'s limits from a model config's parameters (the defaults where absent)."""
    return {"max_pixels": int(params.get("max_pixels", MAX_PIXELS)),
            "max_aspect": float(params.get("max_aspect_ratio", MAX_ASPECT_RATIO)),
            "min_side": int(params.get("min_side", MIN_SIDE))}


def decode_batches(
    pool: Executor, images_per_request: Sequence[Sequence[bytes]], limits: Mapping[str, Any],
    spec: Mapping[str, Any],
) -> list[np.ndarray | BaseException]:
    """For each request of a dynamic batch: its images as one FP32 (n, 3, H, W) array, or the
    first error among its images. Decoding runs on ``pool`` (Pillow releases the GIL)."""
    shorter = int(spec["resize_shorter"])

    def one(data: bytes) -> np.ndarray:
        return to_pixels(decode(data, shorter_side=shorter, **limits), **spec)

    futures = [[pool.submit(one, data) for data in images] for images in images_per_request]
    out: list[np.ndarray | BaseException] = []
    for request_futures in futures:
        try:
            pixels = [f.result() for f in request_futures]
        except BaseException as e:
            out.append(e)
            continue
        out.append(np.stack(pixels) if pixels else np.zeros((0, 3, 1, 1), np.float32))
    return out
