"""Fixtures for fault tests: the environment of real `psp` processes on real stores."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.service.faults.processes import PspProcess, free_port

ProcessFactory = Callable[..., PspProcess]


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
    """Starts `psp serve` (with `role`) or `psp worker`; every process is stopped afterwards."""
    started: list[PspProcess] = []

    def start(command: str, env: dict[str, str]) -> PspProcess:
        port = free_port()
        if command == "serve":
            args = ["serve", "--port", str(port), "--log-level", "warning"]
        else:
            args = ["worker", "--host", "127.0.0.1", "--log-level", "warning"]
            env = {**env, "PSP_METRICS_PORT": str(port)}
        process = PspProcess(
            args,
            env,
            f"http://127.0.0.1:{port}/healthz",
            tmp_path / f"{command}-{len(started)}.log",
        )
        process.port = port  # type: ignore[attr-defined]
        process.start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
