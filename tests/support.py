"""Helpers shared by the tests: real images in every awkward encoding, free ports."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from visrec.local.milvus_server import free_port

__all__ = ["ROOT", "bomb_png", "encode", "free_port", "odd_images", "photo", "truncated_png"]

ROOT = Path(__file__).resolve().parent.parent


def encode(img: Image.Image | np.ndarray, fmt: str = "PNG", **kwargs: object) -> bytes:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def photo(name: str = "chelsea", fmt: str = "JPEG") -> bytes:
    from skimage import data

    return encode(getattr(data, name)(), fmt)


def truncated_png() -> bytes:
    """A real PNG photo cut in the middle of its pixel data: the header is intact."""
    data = photo("coffee", "PNG")
    return data[: len(data) // 2]


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A tiny PNG whose header claims width x height RGB pixels (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + \
        _chunk(b"IEND", b"")


def odd_images() -> dict[str, bytes]:
    """The same photo as palette, palette+transparency, RGBA, LA, L, 16-bit grey, CMYK JPEG."""
    from skimage import data

    rgb = Image.fromarray(data.astronaut()).resize((160, 160))
    palette_t = rgb.convert("P")
    palette_t.info["transparency"] = 0
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgb.size))
    grey16 = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
    return {
        "palette": encode(rgb.convert("P")),
        "palette_transparency": encode(palette_t, transparency=0),
        "rgba": encode(rgba),
        "grey_alpha": encode(rgba.convert("LA")),
        "grey": encode(rgb.convert("L")),
        "grey16": encode(grey16),
        "cmyk_jpeg": encode(rgb.convert("CMYK"), "JPEG"),
        "webp": encode(rgb, "WEBP"),
    }
