"""The Alembic migrations build exactly the schema of the models, on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from service.registry.database import make_engine
from service.registry.migrate import alembic_config, downgrade, upgrade
from service.registry.models import LIVE_KEY_INDEX, Base

# The registry is the subject here: every test runs on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_databases

REPOSITORY_ROOT = Path(__file__).resolve().parents[3]

EXPECTED_COLUMNS = {
    "index": False,
    "seed": True,
    "power": True,
    "created_at": False,
    "retired_at": True,
    "examples_seen": False,
    "prequential_correct": False,
    "prequential_seen": False,
    "shard": False,
    "key": False,
}
"""Column name -> nullable."""


def _head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def test_first_revision_creates_exactly_the_contexts_table(database_url: str) -> None:
    upgrade(database_url, "0001")
    engine = make_engine(database_url)
    try:
        inspector = inspect(engine)
        assert set(inspector.get_table_names()) == {"alembic_version", "contexts"}
        columns = {column["name"]: column for column in inspector.get_columns("contexts")}
        assert {name: column["nullable"] for name, column in columns.items()} == EXPECTED_COLUMNS
        assert inspector.get_pk_constraint("contexts")["constrained_columns"] == ["index"]
        indexes = inspector.get_indexes("contexts")
        assert [(index["name"], index["column_names"], index["unique"]) for index in indexes] == [
            (LIVE_KEY_INDEX, ["key"], True)
        ]
        where = indexes[0]["dialect_options"][f"{engine.dialect.name}_where"]
        assert "retired_at IS NULL" in str(where)
        assert columns["key"]["type"].length == 128  # type: ignore[attr-defined]
        with engine.connect() as connection:
            version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
            if engine.dialect.name == "postgresql":
                rows = connection.execute(
                    text(
                        "SELECT column_name, data_type FROM information_schema.columns "
                        "WHERE table_name = 'contexts'"
                    )
                )
                types = {name: data_type for name, data_type in rows}
                assert types == {
                    "index": "bigint",
                    "seed": "bigint",
                    "power": "double precision",
                    "created_at": "timestamp with time zone",
                    "retired_at": "timestamp with time zone",
                    "examples_seen": "bigint",
                    "prequential_correct": "bigint",
                    "prequential_seen": "bigint",
                    "shard": "integer",
                    "key": "character varying",
                }
            else:
                ddl = connection.execute(
                    text("SELECT sql FROM sqlite_master WHERE name = 'contexts'")
                ).scalar_one()
                assert '"index" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT' in ddl
        assert version == "0001"
    finally:
        engine.dispose()


def test_migrated_schema_matches_the_models(database_url: str) -> None:
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "compare_server_default": True}
            )
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_upgrade_twice_is_a_no_op_and_downgrade_removes_the_table(database_url: str) -> None:
    upgrade(database_url)
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        assert "contexts" in inspect(engine).get_table_names()
        with engine.connect() as connection:
            versions = connection.execute(text("SELECT version_num FROM alembic_version")).all()
        assert [version for (version,) in versions] == [_head_revision()]
        downgrade(database_url, "base")
        assert "contexts" not in inspect(engine).get_table_names()
        upgrade(database_url)
        assert "contexts" in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_upgrade_accepts_a_plain_postgresql_url(postgres_database_url: str) -> None:
    plain = postgres_database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    assert plain.startswith("postgresql://")
    upgrade(plain)
    engine = make_engine(plain)
    try:
        assert engine.dialect.driver == "psycopg"
        assert "contexts" in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_concurrent_upgrades_on_postgresql_wait_for_each_other(
    postgres_database_url: str,
) -> None:
    # Two separate processes, as an API and a worker starting together would be.
    script = "import sys; from service.registry.migrate import upgrade; upgrade(sys.argv[1])"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, postgres_database_url],
            cwd=REPOSITORY_ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
    engine = make_engine(postgres_database_url)
    try:
        with engine.connect() as connection:
            versions = connection.execute(text("SELECT version_num FROM alembic_version")).all()
        assert [version for (version,) in versions] == [_head_revision()]
    finally:
        engine.dispose()


def test_upgrades_from_threads_of_one_process_do_not_collide(database_url: str) -> None:
    barrier = threading.Barrier(4)

    def start() -> None:
        barrier.wait()
        upgrade(database_url)

    with ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(start) for _ in range(4)]:
            future.result(timeout=60)
    engine = make_engine(database_url)
    try:
        assert "contexts" in inspect(engine).get_table_names()
    finally:
        engine.dispose()
