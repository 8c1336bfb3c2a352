"""The application's lifespan: what it does to the process beyond opening the runtime."""

from __future__ import annotations

import gc
from pathlib import Path

import torch
from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.api.helpers import sqlite_settings


def test_startup_freezes_the_long_lived_objects_and_shutdown_thaws_them(make_settings) -> None:
    gc.unfreeze()
    with TestClient(create_app(make_settings())) as client:
        assert client.get("/healthz").status_code == 200
        # torch, the model and the routes alone are far more than this many objects
        assert gc.get_freeze_count() > 100_000
    assert gc.get_freeze_count() == 0


def test_the_server_sets_torch_threads_from_the_settings(tmp_path: Path) -> None:
    # OpenMP keeps the thread count per calling thread: read it where the app runs.
    with TestClient(create_app(sqlite_settings(tmp_path, torch_threads=1))) as client:
        assert client.portal.call(torch.get_num_threads) == 1  # type: ignore[union-attr]
    with TestClient(create_app(sqlite_settings(tmp_path, torch_threads=2))) as client:
        assert client.portal.call(torch.get_num_threads) == 2  # type: ignore[union-attr]
