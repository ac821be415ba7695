"""Image sources of posts: checked as the client builds them (refused at the caller when no stage could read
them), and read where the image is used (inline, under the image root, or downloaded; the decoder's own
checks, :mod:`serving.images`, follow)."""

from __future__ import annotations

import base64
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from streamcore.exceptions import BadInput
from streamcore.fetch import FetchPolicy, fetch_url
from streamcore.schemas import ImageSource
from streamcore.settings import Settings


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


def _read_path(relative: str, root: Path) -> bytes:
    if "\x00" in relative:  # no file system names one; os refuses it with a ValueError, not an OSError
        raise BadInput("path_refused", f"{relative!r} holds a NUL character")
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
    return FetchPolicy(timeout_s=settings.fetch.timeout_s, max_bytes=settings.limits.max_message_bytes,
                       allow_http=settings.fetch.allow_http)


def load_bytes(source: ImageSource, settings: Settings) -> bytes:
    """The encoded image of a post's source: inline, under the image root, or downloaded.

    Raises:
        BadInput: ``image_b64_invalid``/``image_empty``, ``path_*`` or ``url_*`` reasons.
    """
    if source.b64 is not None:
        return source.raw_bytes()
    if source.path is not None:
        return _read_path(source.path, settings.fetch.image_root)
    return fetch_url(source.url, fetch_policy(settings))
