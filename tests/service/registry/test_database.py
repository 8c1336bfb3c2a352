"""Engines, sessions and the readiness ping of the registry."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from service.registry.database import (
    SQLITE_BUSY_TIMEOUT_MS,
    make_engine,
    make_session_factory,
    normalize_database_url,
    ping,
)
from service.registry.migrate import upgrade
from service.registry.models import Base
from service.registry.registration import create_context


def test_plain_postgresql_urls_use_psycopg() -> None:
    for url in ("postgresql://u:p%40ss@h:5432/db", "postgres://u:p%40ss@h:5432/db"):
        normalized = normalize_database_url(url)
        assert normalized.drivername == "postgresql+psycopg"
        assert normalized.password == "p@ss"
        assert normalized.database == "db"
    explicit = normalize_database_url("postgresql+psycopg://h/db")
    assert explicit.drivername == "postgresql+psycopg"
    assert normalize_database_url("sqlite:///x.db").drivername == "sqlite"


def test_sqlite_engine_uses_wal_and_a_busy_timeout(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'r.db'}")
    try:
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert connection.execute(text("PRAGMA busy_timeout")).scalar() == (
                SQLITE_BUSY_TIMEOUT_MS
            )
        assert ping(engine) is True
    finally:
        engine.dispose()


def test_in_memory_sqlite_keeps_one_database() -> None:
    engine = make_engine("sqlite://")
    try:
        Base.metadata.create_all(engine)
        factory = make_session_factory(engine)
        with factory() as session:
            create_context(session=session, key="a", kind="binary", seed=3)
            session.commit()
        with engine.connect() as connection:
            assert connection.execute(text("SELECT seed FROM contexts")).scalar() == 3
    finally:
        engine.dispose()


def test_postgresql_engine_pings(postgres_database_url: str) -> None:
    engine = make_engine(postgres_database_url)
    try:
        assert engine.dialect.driver == "psycopg"
        assert engine.pool._pre_ping is True
        assert ping(engine) is True
    finally:
        engine.dispose()


def test_ping_is_false_when_the_server_is_down() -> None:
    # Port 1 on loopback refuses connections at once.
    engine = make_engine("postgresql://postgres@127.0.0.1:1/postgres")
    try:
        assert ping(engine) is False
    finally:
        engine.dispose()


def test_rows_outlive_the_commit(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as session:
            row, _ = create_context(session=session, key="a", kind="binary", seed=3)
            session.commit()
        # Readable after commit and close, as a response body is built after the transaction.
        assert (row.key, row.seed, row.examples_seen) == ("a", 3, 0)
    finally:
        engine.dispose()
