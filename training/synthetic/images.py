"""Procedurally drawn garment images: a category silhouette filled with a pattern and colour.

Stands in for photos in the demo and the stream tests; the Table II benchmark uses Fashion-MNIST.
"""

from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image, ImageDraw

# Silhouettes as polygons on a unit square, per category; unknown categories get a generic shape.
_SHAPES: dict[str, list[tuple[float, float]]] = {
    "dresses": [(0.4, 0.1), (0.6, 0.1), (0.65, 0.35), (0.85, 0.9), (0.15, 0.9), (0.35, 0.35)],
    "skirts": [(0.35, 0.3), (0.65, 0.3), (0.85, 0.8), (0.15, 0.8)],
    "trouser_and_shorts": [(0.3, 0.1), (0.7, 0.1), (0.75, 0.9), (0.55, 0.9), (0.5, 0.4), (0.45, 0.9), (0.25, 0.9)],
    "jeans": [(0.32, 0.1), (0.68, 0.1), (0.72, 0.9), (0.55, 0.9), (0.5, 0.45), (0.45, 0.9), (0.28, 0.9)],
    "shoes": [(0.1, 0.55), (0.45, 0.55), (0.9, 0.7), (0.9, 0.8), (0.1, 0.8)],
    "bags": [(0.25, 0.35), (0.75, 0.35), (0.8, 0.8), (0.2, 0.8)],
}
_TOP = [(0.3, 0.15), (0.7, 0.15), (0.9, 0.35), (0.78, 0.45), (0.7, 0.38), (0.7, 0.85), (0.3, 0.85),
        (0.3, 0.38), (0.22, 0.45), (0.1, 0.35)]
_COLOURS = {"black": (20, 20, 20), "white": (235, 235, 235), "red": (200, 30, 40), "blue": (40, 70, 190),
            "green": (40, 140, 60), "yellow": (230, 200, 40), "pink": (230, 120, 170), "brown": (120, 75, 40),
            "gray": (128, 128, 128), "navy blue": (20, 30, 90), "orange": (240, 130, 30), "purple": (110, 50, 150)}


def _texture(size: int, pattern: str, colour: tuple[int, int, int], rng: random.Random) -> Image.Image:
    tex = Image.new("RGB", (size, size), colour)
    draw = ImageDraw.Draw(tex)
    ink = tuple(255 - c for c in colour)
    step = max(4, size // 10)
    if pattern in ("striped", "marl"):
        for y in range(0, size, step):
            draw.rectangle([0, y, size, y + step // 3], fill=ink)
    elif pattern in ("checked", "herringbone"):
        for x in range(0, size, step):
            draw.line([(x, 0), (x, size)], fill=ink, width=2)
            draw.line([(0, x), (size, x)], fill=ink, width=2)
    elif pattern in ("polka_dot", "floral", "animal_print", "camouflage", "paisley"):
        for _ in range(size * size // (step * step)):
            x, y, r = rng.randrange(size), rng.randrange(size), rng.randint(step // 4, step // 2)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=ink)
    return tex


def draw_garment(category: str, pattern: str, colour: str, *, size: int = 96, rng: random.Random) -> Image.Image:
    """An RGB image of one garment of ``category`` with ``pattern`` in ``colour`` on a light background."""
    background = Image.new("RGB", (size, size), tuple(rng.randint(215, 250) for _ in range(3)))
    mask = Image.new("L", (size, size), 0)
    shape = _SHAPES.get(category, _TOP)
    ImageDraw.Draw(mask).polygon([(x * size, y * size) for x, y in shape], fill=255)
    texture = _texture(size, pattern, _COLOURS.get(colour, (128, 128, 128)), rng)
    background.paste(texture, (0, 0), mask)
    return background


def colour_names() -> list[str]:
    """Colours the drawer knows."""
    return list(_COLOURS)


def jpeg_bytes(image: Image.Image, quality: int = 85) -> bytes:
    """Encode as JPEG."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def photo_like(category: str, pattern: str, colour: str, *, size: int, rng: random.Random) -> Image.Image:
    """A photo-sized garment picture with a photo's entropy: the drawn garment, upscaled, under uneven
    lighting, with fabric grain and sensor noise (a 1080 px one is ~250 KB as JPEG quality 85, like a
    phone photo, where a flat drawing would be ~40 KB and decode faster than any real upload)."""
    np_rng = np.random.default_rng(rng.randrange(2**32))
    base = draw_garment(category, pattern, colour, size=max(32, size // 4), rng=rng)
    pixels = np.asarray(base.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    ramp = np.linspace(0.75, 1.15, size, dtype=np.float32)
    light = ramp[:, None] if rng.random() < 0.5 else ramp[None, :]
    grain = np.asarray(Image.fromarray(np_rng.integers(0, 256, (size // 8, size // 8), dtype=np.uint8))
                       .resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) - 128.0
    noise = np_rng.normal(0.0, 9.0, (size, size, 3)).astype(np.float32)
    out = pixels * light[..., None] + 0.25 * grain[..., None] + noise
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
