"""Shared pytest fixtures.

Sections are self-contained; add new fixtures in a section of their own.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from service.registry.database import make_engine, make_session_factory, normalize_database_url
from service.registry.migrate import upgrade
from service.testing.processes import RedisServer

# ------------------------------------------------------------------------------------------------
# Registry databases: every registry test runs on SQLite and on PostgreSQL.
#
# PostgreSQL tests are never skipped: a missing server fails them with a message saying how to
# point them at one (PSP_TEST_POSTGRES_URL, an admin URL allowed to create databases).
# ------------------------------------------------------------------------------------------------

DEFAULT_POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def postgres_admin_engine() -> Iterator[Engine]:
    """An autocommit engine on the PostgreSQL maintenance database, to create test databases."""
    url = normalize_database_url(
        os.environ.get("PSP_TEST_POSTGRES_URL", DEFAULT_POSTGRES_ADMIN_URL)
    )
    engine = create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except OperationalError as error:
        engine.dispose()
        pytest.fail(
            f"PostgreSQL is not reachable at {url.render_as_string(hide_password=True)}: "
            f"{error.orig}. Start PostgreSQL there or set PSP_TEST_POSTGRES_URL to an admin URL "
            "of a server that allows CREATE DATABASE.",
            pytrace=False,
        )
    yield engine
    engine.dispose()


def _drop_database(admin: Engine, name: str) -> None:
    with admin.connect() as connection:
        connection.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = :name AND pid <> pg_backend_pid()"
            ),
            {"name": name},
        )
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def postgres_database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a fresh, empty PostgreSQL database, dropped after the test."""
    admin: Engine = request.getfixturevalue("postgres_admin_engine")
    name = f"psp_test_{uuid.uuid4().hex}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        _drop_database(admin, name)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty registry database: a SQLite file, or a throwaway PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    url: str = request.getfixturevalue("postgres_database_url")
    return url


@pytest.fixture
def migrated_database_url(database_url: str) -> str:
    """`database_url` with the registry schema migrated to the latest revision."""
    upgrade(database_url)
    return database_url


@pytest.fixture
def registry_engine(migrated_database_url: str) -> Iterator[Engine]:
    """An engine on a migrated registry database, disposed after the test."""
    engine = make_engine(migrated_database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def registry_session_factory(registry_engine: Engine) -> sessionmaker[Session]:
    """The session factory the service would use on the migrated database."""
    return make_session_factory(registry_engine)


@pytest.fixture
def registry_session(registry_session_factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session on a migrated registry database; closed (uncommitted work rolled back) after."""
    with registry_session_factory() as session:
        yield session


# ------------------------------------------------------------------------------------------------
# Redis: tests share the server and isolate themselves by key prefix; a test that kills Redis
# gets a server of its own (`throwaway_redis`).
#
# Redis tests are never skipped: a missing server fails them with a message saying how to start
# one or where to point them (PSP_TEST_REDIS_URL).
# ------------------------------------------------------------------------------------------------

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
def key_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; every key under it is deleted afterwards."""
    prefix = f"psp-test:{uuid.uuid4()}:"
    yield prefix
    # Synchronous, so fixtures on either side of the event loop can depend on it.
    with redis.Redis.from_url(redis_url, socket_timeout=5) as client:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)


@pytest.fixture
def throwaway_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, to kill and restart without touching the shared one."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()
