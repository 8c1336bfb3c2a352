"""Fixtures for fault tests: the environment of real `psp` processes on real stores."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.testing.processes import ServerProcess, psp_serve, psp_worker

ProcessFactory = Callable[..., ServerProcess]


@pytest.fixture
def base_env(
    tmp_path: Path, postgres_database_url: str, redis_url: str, key_prefix: str
) -> dict[str, str]:
    """Settings shared by every process of one test: its own database, Redis prefix, data dir."""
    return {
        "PSP_DATA_DIR": str(tmp_path / "data"),
        "PSP_DATABASE_URL": postgres_database_url,
        "PSP_REDIS_URL": redis_url,
        "PSP_KEY_PREFIX": key_prefix,
        "PSP_DEVICE": "cpu",
        "PSP_MODEL__KIND": "binary",
        "PSP_MODEL__HIDDEN": "[32]",
        "PSP_MODEL__INPUT_SHAPE": "[64]",
        "PSP_REGISTRY_POLL_SECONDS": "1",
        # One thread: the replay in the test must sum in the same order as the worker.
        "OMP_NUM_THREADS": "1",
    }


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[ProcessFactory]:
    """Starts `psp serve` (with `role`) or `psp worker`, with command-line options; every
    process is stopped afterwards."""
    started: list[ServerProcess] = []

    def start(command: str, env: dict[str, str], *options: str) -> ServerProcess:
        launcher = psp_serve if command == "serve" else psp_worker
        process = launcher(f"{command}-{len(started)}", env, tmp_path, *options)
        process.start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
