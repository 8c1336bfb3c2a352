"""Checkpoint cadence, retention and POST /model/rollback in the `all` role."""

from __future__ import annotations

from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.api.helpers import register, rows


def _train(client: TestClient, key: str, label: int) -> int:
    response = client.post(
        f"/train/{key}?wait=true", json={"inputs": rows(4, 0.1 * label), "labels": [label] * 4}
    )
    version: int = response.json()["model_version"]
    return version


def test_every_step_checkpoint_keeps_the_last_k_and_rolls_back(make_settings) -> None:
    settings = make_settings(checkpoint={"every_steps": 1, "every_seconds": 60, "keep": 3})
    with TestClient(create_app(settings)) as client:
        register(client, "t")
        probe = {"inputs": rows(2, 0.3)}
        answers = {}
        for label in range(1, 6):
            version = _train(client, "t", label)
            # The trainer checkpoints after each step; wait until that version is on disk.
            answers[version] = client.post("/predict/t", json=probe).json()["probabilities"]
        client.portal.call(client.app.state.runtime.trainer.checkpoint)  # type: ignore[attr-defined]
        model = client.get("/model").json()
        assert model["model_version"] == 5
        assert model["checkpoints"] == [3, 4, 5]

        missing = client.post("/model/rollback", json={"version": 1})
        assert missing.status_code == 404
        assert "[3, 4, 5]" in missing.json()["detail"]
        assert client.get("/model").json()["model_version"] == 5

        rolled = client.post("/model/rollback", json={"version": 3})
        assert rolled.status_code == 200
        assert rolled.json()["model_version"] == 3
        assert client.post("/predict/t", json=probe).json()["probabilities"] == answers[3]
        assert _train(client, "t", 2) == 4  # training continues from the restored state
        assert client.post("/model/rollback", json={"version": -1}).status_code == 422
    with TestClient(create_app(settings)) as client:  # the rollback survives a restart
        assert client.get("/model").json()["model_version"] == 4
