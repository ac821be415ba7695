"""The Redis URL setting: the schemes redis-py connects with, and the URL as a log or repr may show it."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

#: What redis-py's ``from_url`` accepts (case-insensitive); anything else fails there with a bare ValueError.
SCHEMES = ("redis://", "rediss://", "unix://")


def check_redis_url(url: str) -> str:
    """``url`` if redis-py can connect with it; else ValueError saying why, without the URL (it may hold a
    password)."""
    if not url.lower().startswith(SCHEMES):
        raise ValueError(f"expected a URL starting with {', '.join(SCHEMES)} (e.g. redis://host:6379/0)")
    try:
        urlsplit(url).port  # noqa: B018 - read for its check: a port that is not 0-65535 raises
    except ValueError:
        raise ValueError("its port is not a number from 0 to 65535") from None
    return url


def mask_url(url: str) -> str:
    """``url`` with its password (if any) replaced by asterisks."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:**********@{netloc}"))
