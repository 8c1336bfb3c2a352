"""Fixtures for service tests: settings on a throwaway registry and a running app."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(tmp_path: Path, database_url: str) -> SettingsFactory:
    """Builds settings for a small model on this test's registry database and data dir."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "database_url": database_url,
            "device": "cpu",
            "model": {"kind": "complex", "input_shape": [64], "hidden": [32]},
            "training": {"batch_size": 32},
            "checkpoint": {"every_steps": 50, "every_seconds": 60},
        }
        values.update(overrides)
        return Settings(**values)

    return build


@pytest.fixture
def client(make_settings: SettingsFactory) -> Iterator[TestClient]:
    """A running app (lifespan started) on SQLite and on PostgreSQL."""
    with TestClient(create_app(make_settings())) as test_client:
        yield test_client
