"""Fixtures of the API tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.api.helpers import sqlite_settings


@pytest.fixture
def app_client(tmp_path: Path) -> Iterator[TestClient]:
    """A running app on a SQLite registry only, for tests whose subject is not the database."""
    with TestClient(create_app(sqlite_settings(tmp_path))) as client:
        yield client
