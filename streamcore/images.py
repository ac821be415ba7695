"""Safe image loading: size limits, decompression bombs, no path escape, no requests to private networks."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
from PIL import Image

from streamcore.decode import open_checked, refusals
from streamcore.exceptions import BadInput
from streamcore.schemas import ImageSource
from streamcore.settings import Settings

_URL_TIMEOUT_S = 5.0


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode JPEG/PNG/WebP bytes to RGB, refusing images over ``max_pixels`` before decoding them.

    Raises:
        BadInput: ``image_empty``, ``image_too_large``, ``image_format`` or ``image_undecodable``.
    """
    img = open_checked(data, max_pixels=max_pixels)
    with refusals():
        img.load()
        return img.convert("RGB")


def to_chw(image: Image.Image, size: int) -> np.ndarray:
    """``image`` resized to ``size`` x ``size`` as uint8 ``[3, size, size]`` (the models' layout)."""
    resized = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1).copy()


def _read_path(relative: str, root: Path) -> bytes:
    base = root.resolve()
    target = (base / relative).resolve()
    if Path(relative).is_absolute() or not target.is_relative_to(base):
        raise BadInput("path_refused", f"{relative!r} is outside the image root")
    try:
        return target.read_bytes()
    except OSError as exc:
        raise BadInput("path_unreadable", f"{relative!r}: {exc.strerror}") from None


def _public_address(host: str, port: int) -> str:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise BadInput("url_unreachable", f"cannot resolve {host!r}: {exc}") from None
    addresses = {ipaddress.ip_address(info[4][0]) for info in infos}
    for address in addresses:
        if not address.is_global:
            raise BadInput("url_refused", f"{host!r} resolves to non-public address {address}")
    return str(next(iter(addresses)))


def _fetch_url(url: str, max_bytes: int) -> bytes:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise BadInput("url_refused", f"only http(s) URLs with a host are fetched, got {url[:200]!r}")
    _public_address(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    try:
        # Redirects are not followed: a redirect could point at a private address after our check.
        with httpx.stream("GET", url, timeout=_URL_TIMEOUT_S, follow_redirects=False) as response:
            if response.status_code != 200:
                raise BadInput("url_unreachable", f"HTTP {response.status_code} for {url[:200]!r}")
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise BadInput("image_too_large", f"download exceeds {max_bytes} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as exc:
        raise BadInput("url_unreachable", f"{type(exc).__name__}: {exc}") from None


def load_image(source: ImageSource, settings: Settings) -> Image.Image:
    """Bytes from the post's image source, checked and decoded to RGB.

    Raises:
        BadInput: with a reason code for every way an image can be refused.
    """
    if source.b64 is not None:
        data = source.raw_bytes()
    elif source.path is not None:
        data = _read_path(source.path, settings.image_root)
    else:
        data = _fetch_url(source.url, settings.max_message_bytes)
    return decode_image(data, max_pixels=settings.max_image_pixels)
