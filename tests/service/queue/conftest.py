"""Fixtures for the train-queue tests: a Redis to test against, isolated by key prefix.

Redis tests are never skipped: a missing server fails them with a message saying how to start one
or where to point them (PSP_TEST_REDIS_URL).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio as aioredis

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
START_REDIS = (
    'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no'
)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis, checked once per session."""
    url = os.environ.get("PSP_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as error:
        pytest.fail(
            f"Redis is not reachable at {url}: {error}. Start one (`{START_REDIS}`) or set "
            "PSP_TEST_REDIS_URL to a Redis 7 URL.",
            pytrace=False,
        )
    finally:
        client.close()
    return url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client, to look at what the queue wrote."""
    client = aioredis.Redis.from_url(redis_url, socket_timeout=5)
    yield client
    await client.aclose()


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; every key under it is deleted afterwards."""
    prefix = f"psp-test:{uuid.uuid4()}:"
    yield prefix
    # Synchronous, so fixtures on either side of the event loop can depend on it.
    with redis.Redis.from_url(redis_url, socket_timeout=5) as client:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
