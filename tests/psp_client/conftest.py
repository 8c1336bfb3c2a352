"""A real `psp serve` process for the client tests, on its own port, data dir and registry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.faults.processes import PspProcess, free_port

SMALL_MODEL = {
    "PSP_DEVICE": "cpu",
    "PSP_MODEL__INPUT_SHAPE": "[8]",
    "PSP_MODEL__HIDDEN": "[16]",
    "PSP_MODEL__NUM_CLASSES": "3",
    # Progress counts reach the registry with each checkpoint.
    "PSP_CHECKPOINT__EVERY_SECONDS": "0.2",
}


def start_server(directory: Path, **env: str) -> PspProcess:
    port = free_port()
    process = PspProcess(
        ["serve", "--port", str(port), "--log-level", "warning"],
        {**SMALL_MODEL, "PSP_DATA_DIR": str(directory / "data"), **env},
        f"http://127.0.0.1:{port}/healthz",
        directory / "serve.log",
    )
    process.start()
    return process


def url_of(process: PspProcess) -> str:
    return process.health_url.removesuffix("/healthz")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a running `psp serve` with a small model (8 inputs, 3 classes)."""
    process = start_server(tmp_path_factory.mktemp("serve"))
    try:
        yield url_of(process)
    finally:
        process.stop()


@pytest.fixture(scope="module")
def tiny_queue_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A `psp serve` whose queue holds at most 4 examples, so a 5-row batch always answers 429."""
    process = start_server(tmp_path_factory.mktemp("tiny"), PSP_QUEUE__MAX_PENDING_EXAMPLES="4")
    try:
        yield url_of(process)
    finally:
        process.stop()
