"""One training run at a time across trainer replicas: a Redis lease with a fencing token.

``acquire`` takes a fresh token from a counter (``INCR``, so tokens only grow) and sets the lease key to it
with ``SET NX PX``: only one replica holds the key, and a killed holder's key expires after ``ttl_s``.
The holder renews it while it trains. The token fences the side effect: promotion moves the serving
pointer in the same Lua script that checks the lease still holds this token
(:func:`serving.promotion.promote`), so a replica that stalled past its lease cannot promote over the
next holder's work.
"""

from __future__ import annotations

import redis

from streamcore.exceptions import StylestreamError

# Renew (ARGV[2] = ttl in ms) or release (ARGV[2] = '') the lease, only while it holds our token.
_IF_HELD = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""


class LeaseLost(StylestreamError):
    """The run lease expired or passed to another replica; this replica must not publish its run."""


class Lease:
    """A lease on ``key`` with fencing tokens from ``key + ':fence'``.

    Args:
        client: a synchronous Redis client.
        ttl_s: how long the lease lives without renewal.
    """

    def __init__(self, client: redis.Redis, key: str, *, ttl_s: float) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        self.key = key
        self.ttl_ms = int(ttl_s * 1000)
        self.token: str | None = None
        self._redis = client
        self._if_held = client.register_script(_IF_HELD)

    def acquire(self) -> str | None:
        """Take the lease; returns the fencing token, or None when another holder has it."""
        token = str(self._redis.incr(f"{self.key}:fence"))
        if not self._redis.set(self.key, token, nx=True, px=self.ttl_ms):
            return None
        self.token = token
        return token

    def renew(self) -> bool:
        """Extend the lease by ``ttl_s``; False when it is no longer ours."""
        return self.token is not None and bool(self._if_held(keys=[self.key], args=[self.token, self.ttl_ms]))

    def release(self) -> None:
        """Give the lease up if it is still ours."""
        if self.token is not None:
            self._if_held(keys=[self.key], args=[self.token, ""])
            self.token = None
