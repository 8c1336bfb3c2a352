"""Fixtures for service tests: settings on a throwaway registry and a running app.

The settings run the training steps in a thread of the test process (`steps_in="thread"`): a
child process per app costs a fork and a pipe round trip per step, and only the tests of the
child itself (tests/service/model/test_step_client.py, the fault tests) need one; they ask
for it with `training={"steps_in": "child_process"}` or run real `psp` processes.

The registry is SQLite unless the test module asks for PostgreSQL as well (see the
`both_databases` marker in tests/conftest.py), and a copy of one already migrated: the app's
start-up migration finds nothing to do. The apps built on `sqlite_settings`
(tests/service/api/helpers.py) start from an empty file and migrate it themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

SettingsFactory = Callable[..., Settings]

TEST_TRAINING: dict[str, Any] = {"batch_size": 32, "steps_in": "thread"}
"""Training settings of the tests; a `training` override is merged into them."""


@pytest.fixture
def make_settings(tmp_path: Path, migrated_database_url: str) -> SettingsFactory:
    """Builds settings for a small model on this test's registry database and data dir."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "database_url": migrated_database_url,
            "device": "cpu",
            "model": {"kind": "complex", "input_shape": [64], "hidden": [32]},
            "checkpoint": {"every_steps": 50, "every_seconds": 60},
        }
        values.update(overrides)
        values["training"] = {**TEST_TRAINING, **overrides.get("training", {})}
        return Settings(**values)

    return build


@pytest.fixture
def client(make_settings: SettingsFactory) -> Iterator[TestClient]:
    """A running app (lifespan started) on this test's registry database."""
    with TestClient(create_app(make_settings())) as test_client:
        yield test_client
