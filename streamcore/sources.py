"""Image sources of posts: checked as the client builds them (refused at the caller when no stage could read
them), and read where the image is used (inline, under the image root, or downloaded; the decoder's own
checks, :mod:`serving.images`, follow)."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from streamcore.exceptions import BadInput
from streamcore.fetch import FetchPolicy, fetch_url
from streamcore.schemas import ImageSource, decode_b64
from streamcore.settings import Settings

#: Opening a file under the image root: never blocks (a FIFO with no writer), never follows a symbolic link
#: in the last component (the resolved target has none; one swapped in after the check is refused).
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def path_problem(relative: str) -> str | None:
    """Why ``relative`` can never name a file under the image root (``None`` when it may): empty, absolute,
    a ``..`` part, or a NUL character. The one rule of the client and the classifier."""
    if not relative:
        return "image.path is empty; name a file relative to the classifier's image root"
    if "\x00" in relative:  # no file system names one; os refuses it with a ValueError, not an OSError
        return f"image.path {relative!r} holds a NUL character"
    pure = PurePosixPath(relative)
    if pure.is_absolute():
        return f"image.path {relative!r} is absolute; it is relative to the classifier's image root"
    if ".." in pure.parts:
        return (f"image.path {relative!r} has a '..' part; a path names a file from the image root down, "
                "never up or outside it")
    return None


def check_image(source: ImageSource) -> None:
    """Refuse, at the caller, an image source no stage could read. Only the source's form is checked: a path's
    file and a URL's host are not looked at (the classifier dead-letters what it cannot read).

    Raises:
        ValueError: invalid or empty base64, a URL that is not http(s) with a host, a path that is empty,
            absolute, holds NUL or has a ``..`` part.
    """
    if source.b64 is not None:
        try:
            if not decode_b64(source.b64):
                raise ValueError("image.b64 holds no bytes")
        except BadInput as exc:
            raise ValueError(exc.detail) from None
    elif source.url is not None:
        parts = urlsplit(source.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"image.url must be an http(s) URL with a host, got {source.url[:200]!r}")
    elif (problem := path_problem(source.path)) is not None:
        raise ValueError(f"{problem} (to send a local file, pass it to publish_image)")


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


def _read_path(relative: str, root: Path, max_bytes: int) -> bytes:
    if (problem := path_problem(relative)) is not None:
        raise BadInput("path_refused", problem)
    try:
        base = root.resolve()
        target = (base / relative).resolve()  # symbolic links are followed, and must end inside the root
    except RuntimeError:  # Python < 3.13 raises it for a loop of symbolic links, 3.13 an OSError (ELOOP)
        raise BadInput("path_unreadable", f"{relative!r}: a loop of symbolic links") from None
    except OSError as exc:
        raise BadInput("path_unreadable", f"{relative!r}: {exc.strerror}") from None
    if not target.is_relative_to(base):
        raise BadInput("path_refused", f"{relative!r} is outside the image root")
    try:
        fd = os.open(target, _OPEN_FLAGS)
    except OSError as exc:
        raise BadInput("path_unreadable", f"{relative!r}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO, device or directory would block, never end, or fail
            raise BadInput("path_unreadable", f"{relative!r} is not a regular file")
        with open(fd, "rb", closefd=False) as file:
            data = file.read(max_bytes + 1)  # one byte past the limit at most, whatever size fstat said
    except OSError as exc:
        raise BadInput("path_unreadable", f"{relative!r}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise BadInput("image_too_large", f"{relative!r} is over {max_bytes} bytes, the limit of image downloads "
                                          "(STYLESTREAM_MAX_MESSAGE_BYTES)")
    return data


def fetch_policy(settings: Settings) -> FetchPolicy:
    """How image URLs are downloaded under ``settings`` (the body cap is the message limit)."""
    return FetchPolicy(timeout_s=settings.fetch.timeout_s, max_bytes=settings.limits.max_message_bytes,
                       allow_http=settings.fetch.allow_http)


def load_bytes(source: ImageSource, settings: Settings) -> bytes:
    """The encoded image of a post's source: inline, under the image root, or downloaded. Files and downloads
    are capped at ``max_message_bytes`` (inline bytes are, by the message).

    Raises:
        BadInput: ``image_b64_invalid``/``image_too_large``, ``path_*`` or ``url_*`` reasons.
    """
    limit = settings.limits.max_message_bytes
    if source.b64 is not None:
        return decode_b64(source.b64, max_bytes=limit)
    if source.path is not None:
        return _read_path(source.path, settings.fetch.image_root, limit)
    return fetch_url(source.url, fetch_policy(settings))
