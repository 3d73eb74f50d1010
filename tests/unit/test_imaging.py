"""The preprocess model's imaging code, checked against timm's own eval transform."""

import io

import numpy as np
import pytest
from PIL import Image

from tests.support import bomb_png, encode, odd_images, photo, truncated_png
from visrec.export.triton_backends import imaging

SPEC = {"height": 224, "width": 224, "resize_shorter": 256, "interpolation": "bicubic",
        "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


@pytest.mark.parametrize("crop", [0.875, 1.0])  # the ImageNet crop, and the default export's
@pytest.mark.parametrize("name, fmt", [("chelsea", "JPEG"), ("coffee", "PNG"),
                                       ("astronaut", "PNG"), ("rocket", "JPEG")])
def test_to_pixels_equals_timm_eval_transform(name, fmt, crop):
    from timm.data import create_transform

    data = photo(name, fmt)
    spec = {**SPEC, "resize_shorter": int(224 / crop)}
    ours = imaging.to_pixels(imaging.decode(data, 10**8), **spec)
    tf = create_transform(input_size=(3, 224, 224), interpolation="bicubic", crop_pct=crop,
                          mean=SPEC["mean"], std=SPEC["std"])
    theirs = tf(Image.open(io.BytesIO(data)).convert("RGB")).numpy()
    assert ours.shape == (3, 224, 224) and ours.dtype == np.float32
    assert np.abs(ours - theirs).max() < 1e-5


@pytest.mark.parametrize("name", sorted(odd_images()))
def test_decodes_every_mode_to_rgb(name):
    img = imaging.decode(odd_images()[name], 10**8)
    assert img.mode == "RGB" and img.size == (160, 160)
    px = imaging.to_pixels(img, **SPEC)
    assert np.isfinite(px).all()


def test_transparent_pixels_become_white():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert imaging.decode(encode(rgba), 10**8).getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_grey_keeps_its_range():
    grey16 = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))
    assert imaging.decode(encode(grey16), 10**8).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    data = encode(img, "JPEG", exif=exif.tobytes())
    assert imaging.decode(data, 10**8).size == (20, 40)


def test_small_images_are_padded_like_torchvision():
    """A crop larger than the resized image: black borders where torchvision's CenterCrop puts
    them (an odd margin too), every pixel equal."""
    from torchvision import transforms as T

    img = Image.fromarray(np.random.default_rng(3).integers(0, 255, (300, 10, 3), np.uint8))
    ours = imaging.to_pixels(img, **{**SPEC, "resize_shorter": 101})
    theirs = T.Compose([T.Resize(101, interpolation=T.InterpolationMode.BICUBIC),
                        T.CenterCrop(224), T.ToTensor(),
                        T.Normalize(SPEC["mean"], SPEC["std"])])(img).numpy()
    assert ours.shape == theirs.shape == (3, 224, 224)
    assert np.abs(ours - theirs).max() < 1e-5


@pytest.mark.parametrize("data, message", [
    (b"", "empty"), (b"hello", "not a recognised image format"),
    (truncated_png(), "cannot decode"), (bomb_png(), "too large.*400000000 pixels"),
])
def test_decode_errors(data, message):
    with pytest.raises(imaging.ImageDecodeError, match=message):
        imaging.decode(data, 40_000_000)
