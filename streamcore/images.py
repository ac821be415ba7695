"""Safe image loading: size limits, decompression bombs, no path escape, no requests to private networks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from streamcore.decode import open_checked, orientation, refusals, to_rgb, upright
from streamcore.exceptions import BadInput
from streamcore.fetch import FetchPolicy, fetch_url
from streamcore.schemas import ImageSource
from streamcore.settings import Settings


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode JPEG/PNG/WebP bytes to upright RGB (see :mod:`streamcore.decode`), refusing images over
    ``max_pixels`` before decoding them.

    Raises:
        BadInput: ``image_empty``, ``image_too_large``, ``image_format`` or ``image_undecodable``.
    """
    img = open_checked(data, max_pixels=max_pixels)
    with refusals():
        img.load()
        return upright(to_rgb(img), orientation(img))


def to_chw(image: Image.Image, size: int) -> np.ndarray:
    """``image`` resized to ``size`` x ``size`` as uint8 ``[3, size, size]`` (the models' layout)."""
    resized = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1).copy()


def _read_path(relative: str, root: Path) -> bytes:
    base = root.resolve()
    target = (base / relative).resolve()
    if Path(relative).is_absolute() or not target.is_relative_to(base):
        raise BadInput("path_refused", f"{relative!r} is outside the image root")
    try:
        return target.read_bytes()
    except OSError as exc:
        raise BadInput("path_unreadable", f"{relative!r}: {exc.strerror}") from None


def fetch_policy(settings: Settings) -> FetchPolicy:
    """How image URLs are downloaded under ``settings`` (the body cap is the message limit)."""
    return FetchPolicy(timeout_s=settings.url_timeout_s, max_bytes=settings.max_message_bytes,
                       allow_http=settings.url_allow_http)


def load_bytes(source: ImageSource, settings: Settings) -> bytes:
    """The encoded image of a post's source: inline, under the image root, or downloaded.

    Raises:
        BadInput: ``image_b64_invalid``/``image_empty``, ``path_*`` or ``url_*`` reasons.
    """
    if source.b64 is not None:
        return source.raw_bytes()
    if source.path is not None:
        return _read_path(source.path, settings.image_root)
    return fetch_url(source.url, fetch_policy(settings))


def load_image(source: ImageSource, settings: Settings) -> Image.Image:
    """Bytes from the post's image source, checked and decoded to RGB.

    Raises:
        BadInput: with a reason code for every way an image can be refused.
    """
    return decode_image(load_bytes(source, settings), max_pixels=settings.max_image_pixels)
