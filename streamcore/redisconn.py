"""Redis clients from settings: one server (``redis://``, ``rediss://``) or a Redis Cluster."""

from __future__ import annotations

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from streamcore.exceptions import InfrastructureError
from streamcore.settings import Settings


def _url(settings: Settings) -> str:
    if not settings.redis_url:
        raise InfrastructureError("STYLESTREAM_REDIS_URL is not set and no embedded Redis was started")
    return settings.redis_url


def connect(settings: Settings) -> redis.Redis | RedisCluster:
    """A synchronous client; with ``redis_cluster`` the URL names any node of the cluster."""
    url = _url(settings)
    return RedisCluster.from_url(url) if settings.redis_cluster else redis.Redis.from_url(url)


def connect_async(settings: Settings) -> aioredis.Redis | AsyncRedisCluster:
    """An asyncio client; with ``redis_cluster`` the URL names any node of the cluster."""
    url = _url(settings)
    return AsyncRedisCluster.from_url(url) if settings.redis_cluster else aioredis.Redis.from_url(url)
