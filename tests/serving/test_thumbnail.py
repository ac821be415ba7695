"""Thumbnails for the review page stay small and upright; a refused image keeps its caption."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from serving.images import THUMB_MAX_BYTES, THUMB_SIDE, decode_scaled, make_preview, thumbnail, thumbnail_of_square
from streamcore.preview import CAPTION_CHARS


def _jpeg(width: int, height: int, *, orientation: int | None = None, noise: bool = True) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8) if noise else \
        np.zeros((height, width, 3), dtype=np.uint8)
    pixels[: height // 4] = (255, 0, 0)  # a red band on top: where "up" is
    out = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    Image.fromarray(pixels).save(out, format="JPEG", quality=95, exif=exif)
    return out.getvalue()


def test_a_thumbnail_is_bounded_in_side_and_bytes_even_for_noise():
    thumb = thumbnail(_jpeg(1080, 1350), max_pixels=40_000_000)
    assert thumb is not None and len(thumb) <= THUMB_MAX_BYTES
    img = Image.open(io.BytesIO(thumb))
    assert img.format == "JPEG" and max(img.size) == THUMB_SIDE and img.size[0] < img.size[1]


def _sideways() -> bytes:
    """Stored sideways (the red band on the left after turning) and tagged "rotate 90 CW to view"."""
    sideways = Image.open(io.BytesIO(_jpeg(400, 300, noise=False))).transpose(Image.Transpose.ROTATE_90)
    out = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways.save(out, format="JPEG", exif=exif)
    return out.getvalue()


def test_a_thumbnail_is_upright_by_the_exif_orientation():
    img = Image.open(io.BytesIO(thumbnail(_sideways(), max_pixels=10**8))).convert("RGB")
    assert img.size[0] > img.size[1]
    top, bottom = np.asarray(img)[2].mean(axis=0), np.asarray(img)[-2].mean(axis=0)
    assert top[0] > 150 > bottom[0]


def test_refused_bytes_give_no_thumbnail_but_keep_the_caption():
    assert thumbnail(b"not an image", max_pixels=10**8) is None
    assert thumbnail(_jpeg(200, 200), max_pixels=100) is None  # over the pixel limit
    preview = make_preview(b"", "x" * (CAPTION_CHARS + 50), max_pixels=10**8)
    assert preview.jpeg is None and len(preview.caption) == CAPTION_CHARS


def _smooth_photo(width: int, height: int) -> bytes:
    """Gradients and a red band: a picture whose two thumbnails can be compared pixel by pixel."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1).astype(np.uint8)
    pixels[: height // 4] = (255, 0, 0)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=95)
    return out.getvalue()


def _pixels(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.int16)


def test_the_thumbnail_from_the_models_square_matches_the_one_from_the_bytes():
    data = _smooth_photo(1080, 1350)
    square = torch.from_numpy(decode_scaled(data, 288, max_pixels=10**8))
    from_square, from_bytes = thumbnail_of_square(data, square, max_pixels=10**8), thumbnail(data, max_pixels=10**8)
    assert from_square is not None and len(from_square) <= THUMB_MAX_BYTES
    a, b = _pixels(from_square), _pixels(from_bytes)
    assert a.shape == b.shape and a.shape[:2] == (THUMB_SIDE, 128)  # 1080 x 1350 is 4:5
    assert np.abs(a - b).mean() < 8  # the same picture, up to resampling and JPEG


def test_the_thumbnail_from_the_square_is_upright_and_refusals_give_none():
    data = _sideways()
    square = torch.from_numpy(decode_scaled(data, 288, max_pixels=10**8))  # decoded upright: 300 x 400 squashed
    img = _pixels(thumbnail_of_square(data, square, max_pixels=10**8))
    assert img.shape[1] > img.shape[0]
    assert img[2].mean(axis=0)[0] > 150 > img[-2].mean(axis=0)[0]
    assert thumbnail_of_square(b"not an image", square, max_pixels=10**8) is None


def test_a_square_smaller_than_the_thumbnail_falls_back_to_the_bytes():
    data = _smooth_photo(1080, 1350)
    small = torch.from_numpy(decode_scaled(data, 64, max_pixels=10**8))
    assert make_preview(data, "", max_pixels=10**8, decoded=small).jpeg == thumbnail(data, max_pixels=10**8)
