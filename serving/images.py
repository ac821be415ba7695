"""Image decoding, in one place: checks on the header, then decode straight to model size, on the CPU or
on the device.

A 1080 px JPEG needs only a 224 px input: libjpeg-turbo can decode at 1/2, 1/4 or 1/8 scale in the DCT
domain (PIL's ``Image.draft``), which skips most of the work of a full decode. Pillow releases the GIL
while decoding and resizing, so a thread pool scales with cores. On CUDA, complete JPEGs are decoded by
nvJPEG in batches (:func:`decode_on_device`) and resized there.

Every decoder shows the model the picture a person sees: upright by the EXIF orientation (phones store
portrait photos sideways and tag them), transparent areas over white (how a feed shows a product
cut-out; the pixels under them are often black), 16-bit greys scaled to 8 bits (not clipped to white).
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from PIL.Image import Transpose

from streamcore.exceptions import BadInput
from streamcore.preview import CAPTION_CHARS, Preview
from streamcore.schemas import ImageSource
from streamcore.settings import Settings
from streamcore.sources import load_bytes

FORMATS = ("JPEG", "PNG", "WEBP")

#: EXIF orientation tag value → how the stored pixels become upright: (transpose rows and columns first,
#: then flip left-right, flip top-bottom), as ``ImageOps.exif_transpose``. One table for PIL images and
#: for ``[..., H, W]`` tensors (nvJPEG ignores the tag, so the device path turns its images itself).
TURNS = {2: (False, True, False), 3: (False, True, True), 4: (False, False, True),
         5: (True, False, False), 6: (True, True, False), 7: (True, True, True), 8: (True, False, True)}
_ORIENTATION_TAG = 0x0112
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
#: Images resized together on the device: bounds the float copy of full-size photos (64 x 1080² x 12 B).
_RESIZE_CHUNK = 64
#: Longest side of a review-page thumbnail, in pixels.
THUMB_SIDE = 160
#: Largest thumbnail kept; qualities are tried from the first down until one fits.
THUMB_MAX_BYTES = 16 * 1024
_QUALITIES = (75, 55, 35)
#: An object's default repr, as Pillow puts the file object it could not read in its messages.
_OBJECT_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")
log = logging.getLogger(__name__)
Pixels = TypeVar("Pixels", Image.Image, torch.Tensor)


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
        raise BadInput("image_undecodable", f"{type(exc).__name__}: {_without_reprs(str(exc))}") from None


def _without_reprs(message: str) -> str:
    """``message`` without object reprs (``<_io.BytesIO object at 0x7fd5...>``): no memory addresses in a
    dead letter, and the same message for the same bytes."""
    return _OBJECT_REPR.sub("the image", message)


def _unidentified(data: bytes) -> BadInput:
    """The refusal of bytes Pillow identifies as no image format at all: what they start with, not where they were."""
    return BadInput("image_undecodable", f"cannot identify an image in these bytes (first {min(len(data), 16)}: "
                                         f"{data[:16].hex(' ')}); JPEG, PNG or WebP expected")


def open_checked(data: bytes, *, max_pixels: int) -> Image.Image:
    """Open ``data`` lazily (header only) and refuse empty, oversized or unsupported images.

    Call inside :func:`refusals` when the image is decoded afterwards.

    Raises:
        BadInput: ``image_empty``, ``image_too_large``, ``image_format`` or ``image_undecodable``.
    """
    if not data:
        raise BadInput("image_empty", "image has zero bytes")
    with refusals():
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise _unidentified(data) from None
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
    return value if isinstance(value, int) and value in TURNS else 1


def upright(pixels: Pixels, exif_orientation: int) -> Pixels:
    """A PIL image, or ``[..., H, W]`` tensor, turned by its EXIF orientation (see :data:`TURNS`)."""
    if exif_orientation not in TURNS:
        return pixels
    swap, left_right, top_bottom = TURNS[exif_orientation]
    if isinstance(pixels, Image.Image):
        steps = (Transpose.TRANSPOSE, Transpose.FLIP_LEFT_RIGHT, Transpose.FLIP_TOP_BOTTOM)
        for step, wanted in zip(steps, (swap, left_right, top_bottom)):
            pixels = pixels.transpose(step) if wanted else pixels
        return pixels
    turned = pixels.transpose(-2, -1) if swap else pixels
    dims = [d for d, wanted in ((-1, left_right), (-2, top_bottom)) if wanted]
    return turned.flip(dims) if dims else turned


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


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode JPEG/PNG/WebP bytes to upright RGB at full size, refusing images over ``max_pixels`` before
    decoding them.

    Raises:
        BadInput: ``image_empty``, ``image_too_large``, ``image_format`` or ``image_undecodable``.
    """
    img = open_checked(data, max_pixels=max_pixels)
    with refusals():
        img.load()
        return upright(to_rgb(img), orientation(img))


def load_image(source: ImageSource, settings: Settings) -> Image.Image:
    """Bytes from the post's image source (:func:`streamcore.sources.load_bytes`), checked and decoded to RGB.

    Raises:
        BadInput: with a reason code for every way an image can be refused.
    """
    return decode_image(load_bytes(source, settings), max_pixels=settings.limits.max_image_pixels)


def to_chw(image: Image.Image, size: int) -> np.ndarray:
    """``image`` resized to ``size`` x ``size`` as uint8 ``[3, size, size]`` (the models' layout)."""
    resized = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1).copy()


# -- on the device (nvJPEG) ----------------------------------------------------------------------
@dataclass(frozen=True)
class EncodedJpeg:
    """A complete JPEG (header already checked) whose decoding is left to the device."""

    data: bytes
    #: EXIF orientation, applied on the device after decoding (nvJPEG ignores it).
    orientation: int = 1


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``[N, 3, H, W]`` resized to ``size`` x ``size`` where they are (antialiased bilinear)."""
    resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def decode_on_device(jpegs: list[EncodedJpeg], size: int, device: torch.device) -> list[torch.Tensor | BadInput]:
    """nvJPEG in one batched call, turned upright and resized on the device; one by one (then on the CPU)
    if the batch fails."""
    from torchvision.io import ImageReadMode, decode_jpeg

    # bytearray: torch wants a writable buffer; one memcpy of the compressed bytes.
    raw = [torch.frombuffer(bytearray(j.data), dtype=torch.uint8) for j in jpegs]
    try:
        decoded = decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)
        full: list[torch.Tensor | BadInput] = [upright(img, j.orientation) for img, j in zip(decoded, jpegs)]
    except RuntimeError as exc:
        log.warning("batched nvJPEG decode failed (%s); decoding %d images one by one", exc, len(raw))
        full = [_decode_one(r, j, size, device) for r, j in zip(raw, jpegs)]
    by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, img in enumerate(full):
        if isinstance(img, torch.Tensor) and tuple(img.shape[-2:]) != (size, size):
            by_shape[tuple(img.shape)].append(i)
    for indices in by_shape.values():
        for start in range(0, len(indices), _RESIZE_CHUNK):
            chunk = indices[start: start + _RESIZE_CHUNK]
            for i, small in zip(chunk, resize(torch.stack([full[i] for i in chunk]), size)):
                full[i] = small
    return full


def _decode_one(raw: torch.Tensor, jpeg: EncodedJpeg, size: int, device: torch.device) -> torch.Tensor | BadInput:
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return upright(decode_jpeg(raw, mode=ImageReadMode.RGB, device=device), jpeg.orientation)
    except RuntimeError:
        try:  # the CPU decoder gives the precise reason, or decodes what nvJPEG could not (upright)
            pixels = decode_scaled(jpeg.data, size, max_pixels=2**62)
        except BadInput as exc:
            return exc
        return torch.from_numpy(pixels).to(device)


# -- the review page's thumbnail -----------------------------------------------------------------
def thumbnail(data: bytes, *, max_pixels: int, side: int = THUMB_SIDE, max_bytes: int = THUMB_MAX_BYTES) -> bytes | None:
    """An upright JPEG of at most ``side`` pixels a side and ``max_bytes`` bytes; ``None`` when the image is
    refused or no quality fits. The JPEG decoder downscales in the DCT domain first, so a 1080 px photo
    costs a fraction of a full decode."""
    try:
        img = open_checked(data, max_pixels=max_pixels)
        with refusals():
            if img.format == "JPEG":
                img.draft("RGB", (side, side))
            img.load()
            turn = orientation(img)
            small = to_rgb(img)
            small.thumbnail((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0)
            small = upright(small, turn)
    except Exception:  # noqa: BLE001 - a page without a picture rather than a post without a label
        return None
    return _small_jpeg(small, max_bytes)


def _small_jpeg(small: Image.Image, max_bytes: int) -> bytes | None:
    for quality in _QUALITIES:
        out = io.BytesIO()
        small.save(out, format="JPEG", quality=quality, optimize=False)
        if out.tell() <= max_bytes:
            return out.getvalue()
    return None


def thumbnail_of_square(data: bytes, square: np.ndarray | torch.Tensor, *, max_pixels: int, side: int = THUMB_SIDE,
                        max_bytes: int = THUMB_MAX_BYTES) -> bytes | None:
    """:func:`thumbnail` from the model's input: the photo already decoded, upright and squashed to a square
    (``[3, S, S]`` uint8), its proportions given back from the header. No second decode: ~1.4 ms of CPU instead of
    ~4 ms for a 1080 px photo. Falls back to :func:`thumbnail` when the square is smaller than the thumbnail."""
    try:
        img = open_checked(data, max_pixels=max_pixels)
        width, height = img.size
        if TURNS.get(orientation(img), (False,))[0]:
            width, height = height, width
    except Exception:  # noqa: BLE001 - a page without a picture rather than a post without a label
        return None
    scale = min(1.0, side / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if square.shape[-1] < max(size):
        return thumbnail(data, max_pixels=max_pixels, side=side, max_bytes=max_bytes)
    pixels = np.ascontiguousarray(np.asarray(square).transpose(1, 2, 0))
    small = Image.fromarray(pixels, "RGB").resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return _small_jpeg(small, max_bytes)


def make_preview(data: bytes, caption: str, *, max_pixels: int, decoded: object = None) -> Preview:
    """What the review page shows of a post: the thumbnail of ``data`` and the caption cut to
    :data:`~streamcore.preview.CAPTION_CHARS`. The classifier makes it on its decode threads, from the
    model's decoded square (``decoded``, a ``[3, S, S]`` uint8 tensor) when it has one, else from the bytes."""
    if isinstance(decoded, torch.Tensor) and decoded.dtype == torch.uint8 and decoded.dim() == 3:
        jpeg = thumbnail_of_square(data, decoded, max_pixels=max_pixels)
    else:
        jpeg = thumbnail(data, max_pixels=max_pixels)
    return Preview(jpeg, caption[:CAPTION_CHARS])
