"""A real `psp serve` process for the client tests, on its own port, data dir and registry."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.testing.processes import psp_serve, running

SMALL_MODEL = {
    "PSP_DEVICE": "cpu",
    "PSP_MODEL__INPUT_SHAPE": "[8]",
    "PSP_MODEL__HIDDEN": "[16]",
    "PSP_MODEL__NUM_CLASSES": "3",
    # Progress counts reach the registry with each checkpoint.
    "PSP_CHECKPOINT__EVERY_SECONDS": "0.2",
}


@contextlib.contextmanager
def serving(directory: Path, **env: str) -> Iterator[str]:
    """A `psp serve` with the small model and data under `directory`; yields its base URL."""
    process = psp_serve(
        "serve", {**SMALL_MODEL, "PSP_DATA_DIR": str(directory / "data"), **env}, directory
    )
    with running(process):
        yield process.base_url


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a running `psp serve` with a small model (8 inputs, 3 classes)."""
    with serving(tmp_path_factory.mktemp("serve")) as url:
        yield url


@pytest.fixture(scope="module")
def tiny_queue_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A `psp serve` whose queue holds at most 4 examples, so a 5-row batch always answers 429."""
    with serving(tmp_path_factory.mktemp("tiny"), PSP_QUEUE__MAX_PENDING_EXAMPLES="4") as url:
        yield url
