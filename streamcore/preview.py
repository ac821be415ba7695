"""What the review page shows of a labelled post without its message: a small JPEG and the caption.

The classifier makes the thumbnail (:func:`serving.images.make_preview`) on its decode threads, and the
label sink stores it next to the label with the label's expiry.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Instagram's own caption limit: longer captions are cut (the page shows what a feed would).
CAPTION_CHARS = 2200


@dataclass(frozen=True)
class Preview:
    """A post as the page shows it: its photo small (``None`` when no thumbnail could be made) and caption."""

    jpeg: bytes | None
    caption: str
