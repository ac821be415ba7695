"""Manifest photos → uint8 model inputs, decoded exactly as the serving path decodes posts.

A whole photo goes through :func:`serving.images.decode_scaled` (the classifier's own decoder), so a
model trained here sees the pixels it will serve; a record's ``box`` is cut from the upright photo first.
No-garment negatives that no dataset has (flat colours, noise, gradients, blurred textures) are drawn here.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from tqdm import tqdm

from serving.images import decode_image, decode_scaled, to_chw
from streamcore.exceptions import BadInput
from streamcore.fetch import FetchPolicy, fetch_url
from training.real.manifest import Record

#: Photos larger than this are refused, as posts are by default (40 megapixels).
MAX_PIXELS = 40_000_000


def read_bytes(image: str, *, policy: FetchPolicy | None = None) -> bytes:
    """The encoded photo a record names (a local path or an https URL, fetched with the SSRF-safe client)."""
    if image.startswith(("https://", "http://")):
        return fetch_url(image, policy or FetchPolicy(timeout_s=20.0, max_bytes=64 << 20))
    return Path(image).read_bytes()


def load_record(record: Record, size: int) -> np.ndarray:
    """One record's photo (or its box) as uint8 ``[3, size, size]``: the whole region, squashed, never cropped.

    Raises:
        BadInput: unreadable or undecodable image; OSError: missing file.
    """
    data = read_bytes(record.image)
    if record.box is None:
        return decode_scaled(data, size, max_pixels=MAX_PIXELS)
    img = decode_image(data, max_pixels=MAX_PIXELS)
    _left, _top, right, bottom = record.box
    if right > img.width or bottom > img.height:
        raise BadInput("box_outside", f"box {record.box} is outside the {img.width}x{img.height} photo")
    return to_chw(img.crop(record.box), size)


def load_records(records: list[Record], size: int, *, threads: int = 4, desc: str = "photos") -> tuple[np.ndarray, list[str]]:
    """All records' images ``[N, 3, size, size]`` and, per record, an error ('' when it loaded).

    A photo that fails to load leaves a zero image and its reason, so one bad line never ends a run.
    """
    out = np.zeros((len(records), 3, size, size), dtype=np.uint8)
    errors = [""] * len(records)

    def one(i: int) -> None:
        try:
            out[i] = load_record(records[i], size)
        except (BadInput, OSError) as exc:
            errors[i] = f"{records[i].image}: {exc}"

    with ThreadPoolExecutor(threads) as pool:
        list(tqdm(pool.map(one, range(len(records))), total=len(records), desc=desc, leave=False, disable=None))
    return out, errors


def no_garment_images(count: int, size: int, *, seed: int) -> np.ndarray:
    """``count`` images that show no garment: flat colours, noise, gradients and blurred noise, in turn."""
    rng = np.random.default_rng(seed)
    out = np.empty((count, 3, size, size), dtype=np.uint8)
    ramp = np.linspace(0.0, 1.0, size)
    for i in range(count):
        kind = i % 4
        if kind == 0:
            img = np.broadcast_to(rng.integers(0, 256, size=(3, 1, 1)), (3, size, size))
        elif kind == 1:
            img = rng.integers(0, 256, size=(3, size, size))
        elif kind == 2:
            a, b = rng.integers(0, 256, size=(2, 3, 1, 1))
            t = ramp[None, :, None] if rng.random() < 0.5 else ramp[None, None, :]
            img = a + (b.astype(float) - a) * t
        else:
            noise = Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8))
            img = np.asarray(noise.filter(ImageFilter.GaussianBlur(float(rng.uniform(2, 12))))).transpose(2, 0, 1)
        out[i] = np.asarray(img, dtype=np.float64).clip(0, 255).astype(np.uint8)
    return out
