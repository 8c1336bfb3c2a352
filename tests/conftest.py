"""Shared pytest fixtures.

Sections are self-contained; add new fixtures in a section of their own.

Registry databases: a test that uses `database_url`, `migrated_database_url` or the `registry_*`
fixtures (and so every service test built on `make_settings` or `client`) runs on SQLite only.
A test module whose subject is the database itself (queries, locking, concurrency, migrations,
the writer lease) asks for PostgreSQL too with

    pytestmark = pytest.mark.both_databases

(or the marker on one test or class): each such test then runs once per database, with the ids
`[sqlite]` and `[postgresql]`. A test that needs PostgreSQL alone takes `postgres_database_url`
(empty) or `migrated_postgres_database_url` (migrated) directly.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from service.registry.database import make_engine, make_session_factory, normalize_database_url
from service.registry.migrate import upgrade
from service.testing.processes import RedisServer
from tests.service.faults.summaries import CAMPAIGN_SUMMARIES
from tests.service.fuzz.tally import FIRST_ERRORS, STATUSES, TALLY

# ------------------------------------------------------------------------------------------------
# Order: the files of tests that start real processes first, then the compose smoke test, then
# the rest.
# ------------------------------------------------------------------------------------------------

SMOKE_FILE = "test_smoke.py"
"""The real compose stack: .ci/run builds its images in the background meanwhile."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Real-process files take most of the suite's time, mostly waiting on their processes; on
    pytest-xdist workers (one file each at a time) they go first, so that they overlap each
    other and the quick tests fill in after them, instead of starting last and running alone.
    The compose smoke test comes after them, when .ci/run's image build (seconds with its layers
    cached) is long done, and runs beside the quick tests. The order within a file is kept (the
    sort is stable)."""
    slow = {item.path for item in items if item.get_closest_marker("real_process")}

    def place(item: pytest.Item) -> int:
        if item.path.name == SMOKE_FILE:
            return 1
        return 0 if item.path in slow else 2

    items.sort(key=place)


# ------------------------------------------------------------------------------------------------
# Registry databases: SQLite for every test, PostgreSQL as well where the test asks for it with
# the `both_databases` marker.
#
# PostgreSQL tests are never skipped: a missing server fails them with a message saying how to
# point them at one (PSP_TEST_POSTGRES_URL, an admin URL allowed to create databases). Migrated
# PostgreSQL databases are copies of one template migrated once per run, since running the
# migrations costs far more than copying their result.
# ------------------------------------------------------------------------------------------------

DEFAULT_POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
BACKENDS = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Runs each registry-database test on SQLite, and on PostgreSQL too under `both_databases`."""
    if "database_backend" not in metafunc.fixturenames:
        return
    wants_both = metafunc.definition.get_closest_marker("both_databases") is not None
    backends = BACKENDS if wants_both else BACKENDS[:1]
    metafunc.parametrize("database_backend", backends, indirect=True)


@pytest.fixture
def database_backend(request: pytest.FixtureRequest) -> str:
    """`sqlite` or `postgresql`: the database this run of the test is on."""
    backend: str = getattr(request, "param", BACKENDS[0])
    return backend


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


def _disconnect_all(admin: Engine, name: str) -> None:
    with admin.connect() as connection:
        connection.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = :name AND pid <> pg_backend_pid()"
            ),
            {"name": name},
        )


def _create_database(admin: Engine, template: str | None = None) -> str:
    name = f"psp_test_{uuid.uuid4().hex}"
    copied_from = f' TEMPLATE "{template}"' if template else ""
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"{copied_from}'))
    return name


def _drop_database(admin: Engine, name: str) -> None:
    _disconnect_all(admin, name)
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _url_of(admin: Engine, name: str) -> str:
    return admin.url.set(database=name).render_as_string(hide_password=False)


@pytest.fixture
def postgres_database_url(postgres_admin_engine: Engine) -> Iterator[str]:
    """The URL of a fresh, empty PostgreSQL database, dropped after the test."""
    name = _create_database(postgres_admin_engine)
    try:
        yield _url_of(postgres_admin_engine, name)
    finally:
        _drop_database(postgres_admin_engine, name)


@pytest.fixture(scope="session")
def postgres_template(postgres_admin_engine: Engine) -> Iterator[str]:
    """The name of a PostgreSQL database migrated to the latest revision, dropped at the end."""
    name = _create_database(postgres_admin_engine)
    try:
        upgrade(_url_of(postgres_admin_engine, name))
        # CREATE DATABASE ... TEMPLATE refuses a template anyone is connected to.
        _disconnect_all(postgres_admin_engine, name)
        yield name
    finally:
        _drop_database(postgres_admin_engine, name)


@pytest.fixture
def migrated_postgres_database_url(
    postgres_admin_engine: Engine, postgres_template: str
) -> Iterator[str]:
    """A fresh PostgreSQL database with the registry schema at the latest revision."""
    name = _create_database(postgres_admin_engine, template=postgres_template)
    try:
        yield _url_of(postgres_admin_engine, name)
    finally:
        _drop_database(postgres_admin_engine, name)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite registry file migrated to the latest revision, copied by the tests that want one."""
    path = tmp_path_factory.mktemp("registry-template") / "registry.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def database_url(request: pytest.FixtureRequest, database_backend: str, tmp_path: Path) -> str:
    """An empty registry database: a SQLite file, or a throwaway PostgreSQL database."""
    if database_backend == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    url: str = request.getfixturevalue("postgres_database_url")
    return url


@pytest.fixture
def migrated_database_url(
    request: pytest.FixtureRequest, database_backend: str, tmp_path: Path
) -> str:
    """A registry database with the schema migrated to the latest revision."""
    if database_backend == "sqlite":
        path = tmp_path / "registry.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("migrated_postgres_database_url")
    return url


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


# ------------------------------------------------------------------------------------------------
# The fuzz tests' tally (tests/service/fuzz/tally.py), printed at the end of the run. Under
# pytest-xdist (`make test` runs the suite on several workers) each worker counts its own
# requests and hands them to the controller, which adds them up and prints them. These hooks sit
# here because the controller loads only this conftest.
# ------------------------------------------------------------------------------------------------


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker
        workeroutput["fuzz_tally"] = {
            "tally": dict(TALLY),
            "statuses": dict(STATUSES),
            "first_errors": list(FIRST_ERRORS),
        }
        workeroutput["campaign_summaries"] = list(CAMPAIGN_SUMMARIES)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """A worker finished: its fuzz counts and campaign summaries join this process's."""
    CAMPAIGN_SUMMARIES.extend(getattr(node, "workeroutput", {}).get("campaign_summaries", []))
    counts = getattr(node, "workeroutput", {}).get("fuzz_tally")
    if counts:
        TALLY.update(counts["tally"])
        STATUSES.update({int(status): n for status, n in counts["statuses"].items()})
        FIRST_ERRORS.extend(counts["first_errors"][: 5 - len(FIRST_ERRORS)])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for summary in CAMPAIGN_SUMMARIES:
        for line in summary.splitlines():
            terminalreporter.write_line(line)
    if not TALLY["requests"]:
        return
    terminalreporter.write_line(
        f"fuzz: {TALLY['requests']} generated requests, {TALLY['server_errors']} answered 5xx"
    )
    statuses = ", ".join(f"{status}: {count}" for status, count in sorted(STATUSES.items()))
    terminalreporter.write_line(f"fuzz: answers by status: {statuses}")
    for line in FIRST_ERRORS:
        terminalreporter.write_line(f"fuzz: {line}")
