"""Builders and state snapshots shared by the API tests."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from service.settings import Settings

WIDTH = 64


def rows(n: int, value: float = 0.5, width: int = WIDTH) -> list[list[float]]:
    return [[value] * width for _ in range(n)]


def register(client: TestClient, key: str, **params: Any) -> dict[str, Any]:
    response = client.post("/contexts", json={"key": key, **params})
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    return body


def snapshot(client: TestClient) -> tuple[str, int, list[dict[str, Any]], int]:
    """Everything a rejected request must leave alone: weights, version, registry, queue."""
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    digest = hashlib.sha256()
    for name, tensor in sorted(runtime.shards[0].host.learner.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    contexts = client.get("/contexts", params={"limit": 1000}).json()["items"]
    queue_depth = client.portal.call(runtime.shards[0].queue.stats).pending_examples  # type: ignore[union-attr]
    return digest.hexdigest(), runtime.shards[0].host.model_version, contexts, queue_depth


def wait_for_version(client: TestClient, version: int, timeout: float = 30.0) -> None:
    """Block until the trainer has stepped the model to `version`, so a snapshot is stable."""
    host = client.app.state.runtime.shards[0].host  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while host.model_version < version:
        assert time.monotonic() < deadline, f"the model did not reach version {version} in time"
        time.sleep(0.02)


def sqlite_settings(directory: Path, **overrides: Any) -> Settings:
    """Settings for a small model on a SQLite registry under `directory`; the training steps run
    in a thread unless `training={"steps_in": "child_process"}` asks for a child."""
    values: dict[str, Any] = {
        "data_dir": directory,
        "database_url": f"sqlite:///{directory / 'registry.db'}",
        "device": "cpu",
        "model": {"kind": "complex", "input_shape": [64], "hidden": [32]},
        "checkpoint": {"every_steps": 50, "every_seconds": 60},
        **overrides,
    }
    values["training"] = {"steps_in": "thread", **overrides.get("training", {})}
    return Settings(**values)
