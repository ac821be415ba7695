"""Pattern and material textures painted into Fashion-MNIST garment masks.

Patterns are clearly visible. Materials are only *partly* visible, on purpose and like in real photos:
each material belongs to a look-alike family (matte, sheen, fuzzy, ribbed, twill, metal) with one
surface signature, so the image tells the family but not, say, cotton from linen. The category's range
and the text can narrow it further — which is what the Dynamic heads exploit.
"""

from __future__ import annotations

import numpy as np

#: Look-alike material families; a material not listed is matte.
MATERIAL_FAMILY = {
    **dict.fromkeys(("cotton", "linen", "viscose", "polyester", "jersey", "synthetic"), "matte"),
    **dict.fromkeys(("satin", "silk", "patent"), "sheen"),
    **dict.fromkeys(("wool", "cashmere", "fleece", "felt", "sweat"), "fuzzy"),
    **dict.fromkeys(("ribbed", "cord", "crocheted", "lace", "mesh"), "ribbed"),
    **dict.fromkeys(("denim", "leather", "hardshell", "softshell"), "twill"),
    **dict.fromkeys(("silver", "gold", "platinum", "titanium", "base_metal"), "metal"),
}

PALETTE = np.array(
    [(200, 30, 40), (40, 70, 190), (40, 140, 60), (230, 200, 40), (230, 120, 170), (120, 75, 40),
     (128, 128, 128), (20, 30, 90), (240, 130, 30), (110, 50, 150), (30, 30, 30), (235, 235, 235)],
    dtype=np.float32,
) / 255.0


def _smooth_noise(rng: np.random.Generator, size: int, cell: int) -> np.ndarray:
    """Value noise: a coarse random grid upsampled bilinearly to ``size``."""
    coarse = rng.random((size // cell + 2, size // cell + 2), dtype=np.float32)
    t = np.arange(size, dtype=np.float32) / cell
    i, f = t.astype(int), t - t.astype(int)
    rows = coarse[i] * (1 - f)[:, None] + coarse[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:size, 0:size].astype(np.float32)


def pattern_ink(pattern: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Where the pattern's second colour goes: ``[size, size]`` in 0..1 (0 = base colour)."""
    y, x = _grid(size)
    p = size / 64  # periods scale with the image
    if pattern == "plain":
        return np.zeros((size, size), np.float32)
    if pattern == "striped":
        return ((y // (4 * p)) % 2).astype(np.float32)
    if pattern == "checked":
        return (((y // (8 * p)) + (x // (8 * p))) % 2).astype(np.float32)
    if pattern == "herringbone":
        zig = np.abs((x % (8 * p)) - 4 * p)
        return (((y + zig) // (3 * p)) % 2).astype(np.float32)
    if pattern == "polka_dot":
        cy, cx = (y % (10 * p)) - 5 * p, (x % (10 * p)) - 5 * p
        return (cy**2 + cx**2 < (2.5 * p) ** 2).astype(np.float32)
    if pattern == "floral":
        cy, cx = (y % (16 * p)) - 8 * p, (x % (16 * p)) - 8 * p
        r, theta = np.hypot(cy, cx), np.arctan2(cy, cx)
        return (r < (3 + 3 * np.abs(np.cos(2.5 * theta))) * p).astype(np.float32)
    if pattern == "animal_print":
        n = _smooth_noise(rng, size, max(2, int(6 * p)))
        return (np.abs(n - 0.5) < 0.07).astype(np.float32)
    if pattern == "camouflage":
        n = _smooth_noise(rng, size, max(2, int(10 * p)))
        return np.digitize(n, [0.35, 0.6]).astype(np.float32) / 2
    if pattern == "paisley":
        cy, cx = (y % (14 * p)) - 7 * p, (x % (14 * p)) - 7 * p
        return ((cy / 2) ** 2 + (cx + cy / 2) ** 2 < (2.5 * p) ** 2).astype(np.float32) * 0.8 + (np.hypot(cy, cx) < p) * 0.2
    if pattern == "marl":
        return (rng.random((size, size)) < 0.35).astype(np.float32) * 0.6
    if pattern == "burnout":
        return (_smooth_noise(rng, size, max(2, int(4 * p))) > 0.62).astype(np.float32)
    if pattern == "colour_gradient":
        return y / (size - 1)
    if pattern == "colourful":
        return ((y // (16 * p)) * 3 + (x // (16 * p))) % 4 / 3.0
    if pattern == "photo_print":
        box = (np.abs(y - size * 0.45) < size * 0.15) & (np.abs(x - size / 2) < size * 0.15)
        return box * _smooth_noise(rng, size, max(2, int(3 * p)))
    if pattern == "print":
        bars = (np.abs(y - size * 0.4) < size * 0.08) & (np.abs(x - size / 2) < size * 0.2) & ((x // (2 * p)) % 2 == 0)
        return bars.astype(np.float32)
    raise ValueError(f"no texture for pattern {pattern!r}")


#: Order of materials for the visible-material signature (materials outside the families come last).
_MATERIAL_ORDER = sorted(MATERIAL_FAMILY)


def _material_signature(material: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A per-material (not per-family) weave and colour cast: the visible-attribute ablation's extra cue."""
    i = _MATERIAL_ORDER.index(material) if material in _MATERIAL_ORDER else len(_MATERIAL_ORDER)
    y, x = _grid(size)
    angle = np.pi * i / (len(_MATERIAL_ORDER) + 1)
    period = (3 + i % 4) * size / 64
    weave = 1 + 0.15 * np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period)
    hue = 2 * np.pi * i / (len(_MATERIAL_ORDER) + 1)
    tint = 0.12 * np.cos(hue + np.array((0, 2 * np.pi / 3, 4 * np.pi / 3)))
    return weave.astype(np.float32), tint.astype(np.float32)


def material_surface(material: str, size: int, rng: np.random.Generator, *, visible: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(multiplicative shading ``[S, S]``, additive RGB tint ``[3]``) of the material's family.

    ``visible=True`` adds a per-material signature, so the image alone tells, say, cotton from linen.
    """
    y, x = _grid(size)
    p = size / 64
    family = MATERIAL_FAMILY.get(material, "matte")
    tint = np.zeros(3, np.float32)
    if family == "matte":
        shade = 1 + 0.03 * rng.standard_normal((size, size))
    elif family == "sheen":
        shade = 1 + 0.45 * np.exp(-(((x - y) / size - 0.1) ** 2) / 0.01)
    elif family == "fuzzy":
        shade = 1 + 0.25 * rng.standard_normal((size, size))
    elif family == "ribbed":
        shade = 1 - 0.35 * ((x // max(1, int(p))) % 2)
    elif family == "twill":
        shade = 1 - 0.3 * (((x + y) // max(1, int(2 * p))) % 2)
    else:  # metal: strong highlight and a cold/warm cast
        shade = 1 + 0.6 * np.exp(-(((x + y) / size - 0.9) ** 2) / 0.02)
        tint = np.array((0.15, 0.12, 0.05), np.float32)
    if visible:
        weave, cast = _material_signature(material, size)
        shade, tint = shade * weave, tint + cast
    return shade.astype(np.float32), tint


def paint(grey: np.ndarray, pattern: str, material: str, size: int, rng: np.random.Generator, *,
          visible_materials: bool = False) -> np.ndarray:
    """Render one garment: ``grey`` (``[S, S]`` 0..1 Fashion-MNIST intensity) → ``[3, S, S]`` uint8."""
    base, ink = PALETTE[rng.choice(len(PALETTE), size=2, replace=False)]
    mix = pattern_ink(pattern, size, rng)[..., None]
    colour = base * (1 - mix) + ink * mix
    shade, tint = material_surface(material, size, rng, visible=visible_materials)
    # The Fashion-MNIST intensity keeps the garment's folds and outline visible under the texture.
    fabric = np.clip(colour * (0.55 + 0.45 * grey[..., None]) * shade[..., None] + tint, 0, 1)
    mask = (grey > 0.08)[..., None]
    background = np.full_like(fabric, rng.uniform(0.85, 0.97))
    image = np.where(mask, fabric, background)
    return (image.transpose(2, 0, 1) * 255).round().astype(np.uint8)
