"""Thumbnails for the review page stay small and upright; a refused image keeps its caption."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from serving.images import THUMB_MAX_BYTES, THUMB_SIDE, make_preview, thumbnail
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


def test_a_thumbnail_is_upright_by_the_exif_orientation():
    # Stored sideways (the red band on the left after turning) and tagged "rotate 90 CW to view".
    sideways = Image.open(io.BytesIO(_jpeg(400, 300, noise=False))).transpose(Image.Transpose.ROTATE_90)
    out = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways.save(out, format="JPEG", exif=exif)
    img = Image.open(io.BytesIO(thumbnail(out.getvalue(), max_pixels=10**8))).convert("RGB")
    assert img.size[0] > img.size[1]
    top, bottom = np.asarray(img)[2].mean(axis=0), np.asarray(img)[-2].mean(axis=0)
    assert top[0] > 150 > bottom[0]


def test_refused_bytes_give_no_thumbnail_but_keep_the_caption():
    assert thumbnail(b"not an image", max_pixels=10**8) is None
    assert thumbnail(_jpeg(200, 200), max_pixels=100) is None  # over the pixel limit
    preview = make_preview(b"", "x" * (CAPTION_CHARS + 50), max_pixels=10**8)
    assert preview.jpeg is None and len(preview.caption) == CAPTION_CHARS
