"""Image sources of posts as the client builds and checks them: refused at the caller when no stage could read
them (the classifier's own checks, :mod:`streamcore.images`, happen again where the image is read)."""

from __future__ import annotations

import base64
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from streamcore.exceptions import BadInput
from streamcore.schemas import ImageSource


def check_image(source: ImageSource) -> None:
    """Refuse, at the caller, an image source no stage could read.

    Raises:
        ValueError: invalid or empty base64, a URL that is not http(s) with a host, a path that is absolute or
            leaves the image root.
    """
    if source.b64 is not None:
        try:
            if not source.raw_bytes():
                raise ValueError("image.b64 holds no bytes")
        except BadInput as exc:
            raise ValueError(exc.detail) from None
    elif source.url is not None:
        parts = urlsplit(source.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"image.url must be an http(s) URL with a host, got {source.url[:200]!r}")
    elif PurePosixPath(source.path).is_absolute() or ".." in PurePosixPath(source.path).parts:
        raise ValueError(f"image.path is relative to the classifier's image root, got {source.path!r}; "
                         "to send a local file, pass it to publish_image")


def image_source(image: bytes | Path | str | ImageSource) -> ImageSource:
    """The image source of ``image``: bytes and local files inline, ``http(s)://`` strings as URLs, an
    :class:`ImageSource` as given (``ImageSource(path=...)`` names a file under the classifier's image root).

    Raises:
        FileNotFoundError: ``image`` names no local file.
    """
    if isinstance(image, ImageSource):
        return image
    if isinstance(image, bytes):
        return ImageSource(b64=base64.b64encode(image).decode())
    if isinstance(image, str) and image.startswith(("http://", "https://")):
        return ImageSource(url=image)
    path = Path(image)
    if not path.is_file():
        raise FileNotFoundError(f"no image file {str(image)!r} (for a file under the classifier's image root, "
                                "pass ImageSource(path=...))")
    return ImageSource(b64=base64.b64encode(path.read_bytes()).decode())
