"""Cheap checks on uploaded image bytes before they are sent to Triton (header only)."""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from visrec.gateway.core.errors import InvalidArgument

ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP"})


def check_image(data: bytes, *, max_bytes: int, max_pixels: int) -> tuple[str, int, int]:
    """(format, width, height) of an acceptable image; InvalidArgument otherwise.

    Reads the header only, so a decompression bomb is refused before any pixel is decoded.
    A file whose body is corrupt passes here and is refused by Triton's preprocess model.
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
    if w * h > max_pixels:
        raise InvalidArgument(
            f"image is {w}x{h} = {w * h} pixels; the limit is {max_pixels}"
        )
    return fmt, w, h
