"""Image decoding for the classifier's data path: checks on the header, then decode straight to model size.

A 1080 px JPEG needs only a 224 px input: libjpeg-turbo can decode at 1/2, 1/4 or 1/8 scale in the DCT
domain (PIL's ``Image.draft``), which skips most of the work of a full decode. Pillow releases the GIL
while decoding and resizing, so a thread pool scales with cores.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image, UnidentifiedImageError

from streamcore.exceptions import BadInput

FORMATS = ("JPEG", "PNG", "WEBP")


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
        img = img.convert("RGB")
        # reducing_gap: box-reduce by an integer factor first, then a short bilinear filter.
        resized = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
        return np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1).copy()
