"""Several posts' thumbnails as one picture: the page shows the photos a draw puts on screen from one request.

A browser pays for each image it fetches (a request through its network service, a resource load and a decode
on the page's thread, a frame when it arrives): a few milliseconds of CPU each, which at a classifier's rate
were half of what the page cost. One sheet a draw costs the browser one of each; the page server pays a
decode and an encode of small pictures for it (about a millisecond a photo).
"""

from __future__ import annotations

import io

from PIL import Image, ImageOps

#: One cell: the page's photo box (120 x 150 px, portrait), as large as the thumbnails the classifier keeps.
CELL = (120, 150)
#: Posts one sheet may hold (more than a screen of cards).
MAX_CELLS = 12
_EMPTY = (236, 238, 241)  # the page's placeholder grey
_LARGEST = 1024


def contact_sheet(jpegs: list[bytes | None]) -> bytes:
    """The thumbnails side by side, each cropped to fill its cell (as the page's boxes show them); a missing or
    unreadable one leaves its cell grey."""
    width, height = CELL
    sheet = Image.new("RGB", (width * len(jpegs), height), _EMPTY)
    for n, jpeg in enumerate(jpegs):
        if jpeg is None:
            continue
        try:
            img = Image.open(io.BytesIO(jpeg))
            if max(img.size) > _LARGEST:  # not one of the classifier's thumbnails
                continue
            cell = ImageOps.fit(img.convert("RGB"), CELL, Image.Resampling.BILINEAR)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            continue
        sheet.paste(cell, (width * n, 0))
    out = io.BytesIO()
    sheet.save(out, format="JPEG", quality=82)
    return out.getvalue()
