"""Image decoding for the classifier's data path: checks on the header, then decode straight to model size.

A 1080 px JPEG needs only a 224 px input: libjpeg-turbo can decode at 1/2, 1/4 or 1/8 scale in the DCT
domain (PIL's ``Image.draft``), which skips most of the work of a full decode. Pillow releases the GIL
while decoding and resizing, so a thread pool scales with cores.

Every decoder shows the model the picture a person sees: upright by the EXIF orientation (phones store
portrait photos sideways and tag them), transparent areas over white (how a feed shows a product
cut-out; the pixels under them are often black), 16-bit greys scaled to 8 bits (not clipped to white).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image, UnidentifiedImageError
from PIL.Image import Transpose

from streamcore.exceptions import BadInput

FORMATS = ("JPEG", "PNG", "WEBP")

#: EXIF orientation tag value → the transpose that makes the image upright (as ``ImageOps.exif_transpose``).
UPRIGHT = {2: Transpose.FLIP_LEFT_RIGHT, 3: Transpose.ROTATE_180, 4: Transpose.FLIP_TOP_BOTTOM,
           5: Transpose.TRANSPOSE, 6: Transpose.ROTATE_270, 7: Transpose.TRANSVERSE, 8: Transpose.ROTATE_90}
_ORIENTATION_TAG = 0x0112
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


@contextmanager
def refusals() -> Iterator[None]:
    """Turn every way Pillow can fail on untrusted bytes into a :class:`BadInput` reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except BadInput:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadInput("image_too_large", str(exc)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadInput("image_undecodable", f"{type(exc).__name__}: {exc}") from None


def open_checked(data: bytes, *, max_pixels: int) -> Image.Image:
    """Open ``data`` lazily (header only) and refuse empty, oversized or unsupported images.

    Call inside :func:`refusals` when the image is decoded afterwards.

    Raises:
        BadInput: ``image_empty``, ``image_too_large``, ``image_format`` or ``image_undecodable``.
    """
    if not data:
        raise BadInput("image_empty", "image has zero bytes")
    with refusals():
        img = Image.open(io.BytesIO(data))
        width, height = img.size  # header only: nothing decoded yet
        if width * height > max_pixels:
            raise BadInput("image_too_large", f"{width}x{height} exceeds {max_pixels} pixels")
        if img.format not in FORMATS:
            raise BadInput("image_format", f"format {img.format} is not JPEG, PNG or WebP")
        return img


def orientation(img: Image.Image) -> int:
    """The EXIF orientation (1-8) of an opened image; 1 when there is none or the EXIF block is malformed
    (the pixels are still fine)."""
    try:
        value = img.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - any parse failure of untrusted EXIF means "no orientation"
        return 1
    return value if isinstance(value, int) and value in UPRIGHT else 1


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB: 16-bit greys scaled (``convert`` would clip them), transparency over white."""
    if img.mode in _SIXTEEN_BIT:
        grey = np.clip(np.asarray(img, dtype=np.int64), 0, 65535) >> 8
        img = Image.fromarray(grey.astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        white.alpha_composite(rgba)
        return white.convert("RGB")
    return img.convert("RGB")


def upright(img: Image.Image, exif_orientation: int) -> Image.Image:
    """``img`` turned by its EXIF orientation (see :data:`UPRIGHT`)."""
    method = UPRIGHT.get(exif_orientation)
    return img if method is None else img.transpose(method)


def is_complete_jpeg(data: bytes) -> bool:
    """True when ``data`` ends with the JPEG end-of-image marker (a truncated upload does not)."""
    return data.rstrip(b"\x00")[-2:] == b"\xff\xd9"


def decode_scaled(data: bytes, size: int, *, max_pixels: int) -> np.ndarray:
    """Decode to uint8 ``[3, size, size]``, letting the JPEG decoder downscale in the DCT domain first.

    Raises:
        BadInput: as :func:`open_checked`, or ``image_undecodable`` for corrupt or truncated data.
    """
    img = open_checked(data, max_pixels=max_pixels)
    with refusals():
        if img.format == "JPEG":
            img.draft("RGB", (size, size))  # smallest 1/2^k scale still >= size on both sides
        img.load()  # before reading the EXIF: a PNG's may follow its pixels, and Pillow would load for it
        turn = orientation(img)
        # reducing_gap: box-reduce by an integer factor first, then a short bilinear filter. Resizing to a
        # square before turning gives the same pixels as turning first, on a quarter of the data or less.
        resized = to_rgb(img).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
        return np.asarray(upright(resized, turn), dtype=np.uint8).transpose(2, 0, 1).copy()
