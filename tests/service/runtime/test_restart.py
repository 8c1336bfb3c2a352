"""Train, stop, start again: version, contexts and predictions are the same."""

from __future__ import annotations

import numpy as np
from fastapi.testclient import TestClient

from service.app import create_app


def test_restart_resumes_from_the_last_checkpoint(make_settings) -> None:
    settings = make_settings(checkpoint={"every_steps": 3, "every_seconds": 60})
    rng = np.random.default_rng(1)
    probe = {"inputs": rng.random((5, 64)).tolist()}
    with TestClient(create_app(settings)) as client:
        for key in ("a", "b"):
            client.post("/contexts", json={"key": key})
        for i in range(7):  # 7 steps: the last ones are only in the shutdown checkpoint
            key = "ab"[i % 2]
            client.post(
                f"/train/{key}?wait=true",
                json={
                    "inputs": rng.random((32, 64)).tolist(),
                    "labels": rng.integers(0, 10, 32).tolist(),
                },
            )
        before = {
            "model": client.get("/model").json(),
            "contexts": client.get("/contexts").json(),
            "a": client.post("/predict/a", json=probe).json(),
            "b": client.post("/predict/b", json=probe).json(),
        }
    assert before["model"]["model_version"] == 7
    with TestClient(create_app(settings)) as client:
        after = {
            "model": client.get("/model").json(),
            "contexts": client.get("/contexts").json(),
            "a": client.post("/predict/a", json=probe).json(),
            "b": client.post("/predict/b", json=probe).json(),
        }
        for state in (before, after):
            # Counters advance with checkpoints; the shutdown one counted the last steps.
            for item in state["contexts"]["items"]:
                del item["examples_seen"], item["prequential_accuracy"]
        after["model"]["checkpoints"] = before["model"]["checkpoints"]
        assert after == before
        examples = [c["examples_seen"] for c in client.get("/contexts").json()["items"]]
        assert examples == [4 * 32, 3 * 32]
        # and training continues from there
        response = client.post(
            "/train/a?wait=true", json={"inputs": probe["inputs"], "labels": [1] * 5}
        )
        assert response.json()["model_version"] == 8
