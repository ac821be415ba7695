"""Redis clients from the Redis settings: one server (``redis://``, ``rediss://``) or a Redis Cluster."""

from __future__ import annotations

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from streamcore.exceptions import InfrastructureError
from streamcore.sections import RedisSettings


def _url(redis_settings: RedisSettings) -> str:
    if not redis_settings.url:
        raise InfrastructureError("STYLESTREAM_REDIS_URL is not set and no embedded Redis was started")
    return redis_settings.url


def connect(redis_settings: RedisSettings) -> redis.Redis | RedisCluster:
    """A synchronous client; with ``redis_cluster`` the URL names any node of the cluster."""
    url = _url(redis_settings)
    return RedisCluster.from_url(url) if redis_settings.cluster else redis.Redis.from_url(url)


def connect_async(redis_settings: RedisSettings) -> aioredis.Redis | AsyncRedisCluster:
    """An asyncio client; with ``redis_cluster`` the URL names any node of the cluster."""
    url = _url(redis_settings)
    return AsyncRedisCluster.from_url(url) if redis_settings.cluster else aioredis.Redis.from_url(url)
