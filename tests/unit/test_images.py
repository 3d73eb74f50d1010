import pytest

from tests.support import bomb_png, encode, photo, truncated_png
from visrec.gateway.core.images import ImageLimits, check_image
from visrec.platform.errors import InvalidArgument

LIMITS = {"max_bytes": 10 * 1024 * 1024, "limits": ImageLimits(max_pixels=40_000_000)}


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
        check_image(photo(), max_bytes=100, limits=ImageLimits(max_pixels=10**8))


def test_truncated_body_passes_the_header_check():
    # Decoding is Triton's job: its preprocess model refuses this one (integration test).
    assert check_image(truncated_png(), **LIMITS)[0] == "PNG"


@pytest.mark.parametrize("size, message", [
    ((16000, 1), "shorter side is under the minimum of 8"),
    ((4000, 10), "400 times the other, more than the limit of 20"),
    ((10, 4000), "400 times the other"),
])
def test_refuses_shapes_no_picture_has(size, message):
    from PIL import Image

    with pytest.raises(InvalidArgument, match=message):
        check_image(encode(Image.new("RGB", size)), **LIMITS)


def test_the_gateway_and_tritons_decoder_refuse_exactly_the_same_shapes():
    """Two copies of one rule (Triton's decoder cannot import the gateway): they agree."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from visrec.export.triton_backends import imaging

    @settings(max_examples=500, deadline=None)
    @given(st.integers(1, 30000), st.integers(1, 30000), st.integers(10**4, 10**8),
           st.floats(1, 50), st.integers(1, 64))
    def agree(w, h, pixels, aspect, side):
        ours = ImageLimits(pixels, aspect, side).problem(w, h)
        theirs = imaging.shape_problem(w, h, pixels, aspect, side)
        assert ours == theirs

    agree()


def test_limits_come_from_the_models_config_capped_by_the_gateways():
    params = {"max_pixels": "9000000", "max_aspect_ratio": "5", "min_side": "16"}
    assert ImageLimits.from_parameters(params, 4_000_000) == ImageLimits(4_000_000, 5.0, 16)
    assert ImageLimits.from_parameters({}, 10**9) == ImageLimits()
