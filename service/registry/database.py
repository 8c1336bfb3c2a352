"""Engines and sessions for the registry (embedded SQLite or PostgreSQL), and the few
statement helpers that differ between the two."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final, TypeVar

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_MS = 10_000
"""How long a SQLite writer waits for another writer's lock before failing."""

POSTGRES_CONNECT_TIMEOUT_S = 5
"""Connect timeout for PostgreSQL unless the URL sets one, so a down server fails readiness
checks quickly instead of hanging on TCP retries."""

POSTGRES_IDLE_IN_TRANSACTION_TIMEOUT_S = 10
"""PostgreSQL ends a session of this service that sits inside a transaction doing nothing for
this long. Every registry transaction is one short call; a session idle inside one belongs to a
process that stopped mid-call (SIGSTOP, a frozen VM, a debugger), and its row locks would
otherwise block the shard's next writer, whose claim needs the same row, for as long as it stays
frozen. Below the writer lease's default wait (`PSP_WRITER__WAIT_SECONDS`, 30)."""

IN_LIST_CHUNK: Final = 900
"""The most values one IN-list binds; old SQLite builds allow only 999 parameters a statement."""


def normalize_database_url(url: str) -> URL:
    """Parses a database URL and picks the psycopg 3 driver for plain PostgreSQL URLs.

    Args:
        url: A SQLAlchemy URL; `postgresql://` and `postgres://` are accepted as well as
            `postgresql+psycopg://`.

    Returns:
        The parsed URL, with the driver filled in.
    """
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _is_memory_sqlite(url: URL) -> bool:
    database = url.database or ""
    return database in ("", ":memory:") or "mode=memory" in database


def _set_sqlite_pragmas(dbapi_connection: Any, connection_record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # WAL lets readers go on while one writer commits; the busy timeout makes a second writer
        # wait for the lock rather than fail at once with "database is locked".
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def make_engine(url: str) -> Engine:
    """Creates the registry engine for a SQLite or PostgreSQL URL.

    SQLite connections may be used from any thread (the service runs sync endpoints in a thread
    pool) and run in WAL mode with a busy timeout. An in-memory SQLite database shares one
    connection, since each new connection would otherwise see an empty database. PostgreSQL
    connections are checked before use, so a restarted server does not fail the next request.

    Args:
        url: The database URL, e.g. `Settings.resolved_database_url`.

    Returns:
        A new engine; dispose of it when done.
    """
    parsed = normalize_database_url(url)
    if parsed.get_backend_name() == "sqlite":
        if _is_memory_sqlite(parsed):
            engine = create_engine(
                parsed, connect_args={"check_same_thread": False}, poolclass=StaticPool
            )
        else:
            engine = create_engine(parsed, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _set_sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = POSTGRES_CONNECT_TIMEOUT_S
    if "options" not in parsed.query:  # the URL's own server options win
        idle_ms = int(POSTGRES_IDLE_IN_TRANSACTION_TIMEOUT_S * 1000)
        connect_args["options"] = f"-c idle_in_transaction_session_timeout={idle_ms}"
    return create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory bound to `engine`.

    Objects are not expired on commit, so rows returned by the query functions can still be read
    (e.g. turned into a response body) after the caller commits and closes the session.
    """
    return sessionmaker(bind=engine, expire_on_commit=False)


def ping(engine: Engine) -> bool:
    """Whether the database answers a trivial query; used by the readiness probe.

    Returns:
        True if `SELECT 1` succeeded, False on any database or connection error.
    """
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except (SQLAlchemyError, OSError):
        return False
    return True


def in_chunks(values: Sequence[T]) -> Iterable[Sequence[T]]:
    """`values` in slices short enough for one IN-list each."""
    for start in range(0, len(values), IN_LIST_CHUNK):
        yield values[start : start + IN_LIST_CHUNK]


def insert_with_on_conflict(
    session: Session, entity: type[DeclarativeBase]
) -> postgresql.Insert | sqlite.Insert:
    """An INSERT into `entity` that offers the ON CONFLICT clauses of the session's database."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(entity)
    return sqlite.insert(entity)
