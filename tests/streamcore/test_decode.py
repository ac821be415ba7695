"""The classifier's decode path: decoded straight to model size, same picture, same refusals."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image

from streamcore.decode import decode_scaled, is_complete_jpeg
from streamcore.exceptions import BadInput
from streamcore.images import decode_image, to_chw
from training.synthetic.images import draw_garment, jpeg_bytes, photo_like

PHOTO = jpeg_bytes(photo_like("dresses", "striped", "red", size=1080, rng=random.Random(1)))
DRAWING = jpeg_bytes(draw_garment("dresses", "checked", "blue", size=1080, rng=random.Random(2)))


def _png(size=(40, 30), mode="RGB", fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format=fmt)
    return buf.getvalue()


def _code(data: bytes, **kwargs) -> str:
    with pytest.raises(BadInput) as info:
        decode_scaled(data, 224, max_pixels=kwargs.get("max_pixels", 10**8))
    return info.value.code


@pytest.mark.parametrize("image", [PHOTO, DRAWING], ids=["photo", "drawing"])
def test_dct_scaled_decode_gives_the_same_picture_as_a_full_decode(image):
    fast = decode_scaled(image, 224, max_pixels=10**8)
    full = to_chw(decode_image(image, max_pixels=10**8), 224)
    assert fast.shape == (3, 224, 224) and fast.dtype == np.uint8
    # Downscaling in the DCT domain filters differently; the picture must not change.
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 3  # a 5 px shift of the drawing gives 6


def test_photo_like_images_have_a_photos_entropy():
    # A flat drawing compresses to a fraction of a phone photo and decodes faster than one.
    assert 150_000 < len(PHOTO) < 400_000
    assert len(DRAWING) < len(PHOTO) / 3


def test_other_formats_and_sizes_are_decoded_too():
    assert decode_scaled(_png((300, 120)), 64, max_pixels=10**8).shape == (3, 64, 64)
    small = jpeg_bytes(draw_garment("bags", "plain", "red", size=40, rng=random.Random(3)))
    assert decode_scaled(small, 224, max_pixels=10**8).shape == (3, 224, 224)  # upscaled, not refused


def test_refusals_have_the_same_reasons_as_the_full_decoder():
    assert _code(b"") == "image_empty"
    assert _code(PHOTO[: len(PHOTO) // 2]) == "image_undecodable"
    assert _code(b"definitely not an image") == "image_undecodable"
    assert _code(_png((8, 8), "P", "GIF")) == "image_format"
    assert _code(PHOTO, max_pixels=1000 * 1000) == "image_too_large"


def test_a_truncated_jpeg_is_told_apart_from_a_complete_one():
    assert is_complete_jpeg(PHOTO)
    assert not is_complete_jpeg(PHOTO[:-100])
    assert not is_complete_jpeg(_png())
