import pytest

from tests.support import bomb_png, encode, photo, truncated_png
from visrec.gateway.core.errors import InvalidArgument
from visrec.gateway.core.images import check_image

LIMITS = {"max_bytes": 10 * 1024 * 1024, "max_pixels": 40_000_000}


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP"])
def test_accepts_common_formats(fmt):
    from skimage import data

    assert check_image(encode(data.coffee(), fmt), **LIMITS)[0] == fmt


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"%PDF-1.4 not an image", "not in a recognised format"),
    (bomb_png(), "too large.*400000000 pixels"),
    (photo()[:40], "corrupt"),
])
def test_refuses(data, message):
    with pytest.raises(InvalidArgument, match=message):
        check_image(data, **LIMITS)


def test_refuses_oversize_bytes():
    with pytest.raises(InvalidArgument, match="limit is 100"):
        check_image(photo(), max_bytes=100, max_pixels=10**8)


def test_truncated_body_passes_the_header_check():
    # Decoding is Triton's job: its preprocess model refuses this one (integration test).
    assert check_image(truncated_png(), **LIMITS)[0] == "PNG"
