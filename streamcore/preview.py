"""What the review page shows of a labelled post without its message: a small JPEG and the caption.

The classifier makes the thumbnail on its decode threads, from the bytes it decodes anyway, and the label
sink stores it next to the label with the label's expiry. The JPEG decoder downscales in the DCT domain
first (``Image.draft``), so a 1080 px photo costs a fraction of a full decode.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from streamcore.decode import open_checked, orientation, refusals, to_rgb, upright

#: Longest side of a thumbnail, in pixels.
THUMB_SIDE = 160
#: Largest thumbnail kept; qualities are tried from the first down until one fits.
THUMB_MAX_BYTES = 16 * 1024
_QUALITIES = (75, 55, 35)
#: Instagram's own caption limit: longer captions are cut (the page shows what a feed would).
CAPTION_CHARS = 2200


@dataclass(frozen=True)
class Preview:
    """A post as the page shows it: its photo small (``None`` when no thumbnail could be made) and caption."""

    jpeg: bytes | None
    caption: str


def thumbnail(data: bytes, *, max_pixels: int, side: int = THUMB_SIDE, max_bytes: int = THUMB_MAX_BYTES) -> bytes | None:
    """An upright JPEG of at most ``side`` pixels a side and ``max_bytes`` bytes; ``None`` when the image is
    refused or no quality fits."""
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
    for quality in _QUALITIES:
        out = io.BytesIO()
        small.save(out, format="JPEG", quality=quality, optimize=False)
        if out.tell() <= max_bytes:
            return out.getvalue()
    return None


def make_preview(data: bytes, caption: str, *, max_pixels: int) -> Preview:
    """The thumbnail of ``data`` and the caption cut to :data:`CAPTION_CHARS`."""
    return Preview(thumbnail(data, max_pixels=max_pixels), caption[:CAPTION_CHARS])
