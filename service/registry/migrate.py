"""Schema migrations of the registry, run programmatically with Alembic.

The database URL is handed to Alembic's env.py through `Config.attributes`, never written into
an ini option: configparser would treat a `%` in a percent-encoded password as interpolation.
"""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config

from service.registry.database import normalize_database_url

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
"""The Alembic script directory shipped inside the `service` package."""

# Alembic keeps the running migration in module-global state, so two commands in threads of one
# process would trample each other; separate processes are serialised by a database lock.
_ALEMBIC_LOCK = threading.Lock()


def alembic_config(database_url: str) -> Config:
    """An Alembic configuration for the registry database at `database_url`.

    Args:
        database_url: A SQLAlchemy URL; plain `postgresql://` selects psycopg 3.

    Returns:
        A config with the package's script location and the URL in `attributes["database_url"]`.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = normalize_database_url(database_url).render_as_string(
        hide_password=False
    )
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Migrates the registry database up to `revision` (the latest by default).

    Safe to call on every start-up: an up-to-date database is left as it is. Calls in one process
    run one at a time, and on PostgreSQL concurrent processes (an API and a worker starting
    together) wait for each other.
    """
    with _ALEMBIC_LOCK:
        command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    """Migrates the registry database down to `revision` (`base` removes every table)."""
    with _ALEMBIC_LOCK:
        command.downgrade(alembic_config(database_url), revision)
