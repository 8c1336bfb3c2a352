"""Throwaway stores of the benchmarks: a PostgreSQL database and a Redis key prefix per run.

Both live on 127.0.0.1 and are removed afterwards.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import psycopg
import redis

POSTGRES_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
"""Trust-auth admin connection used to create and drop throwaway databases."""

REDIS_URL = "redis://127.0.0.1:6379/0"
"""The shared Redis; each run isolates itself with its own key prefix."""


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """Creates an empty PostgreSQL database and yields its SQLAlchemy URL; drops it after."""
    name = f"psp_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_dsn(sqlalchemy_url: str) -> str:
    """The libpq form of a `postgresql+psycopg://` URL, for psycopg itself."""
    return sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://", 1)


@contextlib.contextmanager
def throwaway_redis_prefix() -> Iterator[str]:
    """Yields a unique `PSP_KEY_PREFIX` and deletes every key under it afterwards."""
    prefix = f"psp-bench-{uuid.uuid4().hex[:12]}:"
    try:
        yield prefix
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        try:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])
        finally:
            client.close()


@contextlib.contextmanager
def throwaway_stores(*, postgres: bool, redis: bool) -> Iterator[dict[str, str]]:
    """The registry and queue settings of a server: a throwaway PostgreSQL database and the
    shared Redis under a throwaway key prefix, each when asked (else the embedded stores)."""
    env: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        if postgres:
            env["PSP_DATABASE_URL"] = stack.enter_context(throwaway_postgres())
        if redis:
            env["PSP_REDIS_URL"] = REDIS_URL
            env["PSP_KEY_PREFIX"] = stack.enter_context(throwaway_redis_prefix())
        yield env
