"""Rehearsal in the service: replayed rows are never counted, deleted contexts leave the buffer,
and a checkpoint carries the buffer across a restart."""

from __future__ import annotations

import numpy as np
from fastapi.testclient import TestClient

from service.app import create_app
from service.metrics import REPLAY_ROWS
from service.runtime.runtime import Runtime


def _train(client: TestClient, key: str, rows: int, rng: np.random.Generator) -> None:
    body = {"inputs": rng.random((rows, 64)).tolist(), "labels": rng.integers(0, 10, rows).tolist()}
    response = client.post(f"/train/{key}?wait=true", json=body)
    assert response.status_code == 200, response.text


def _runtime(client: TestClient) -> Runtime:
    runtime: Runtime = client.app.state.runtime  # type: ignore[attr-defined]
    return runtime


def _examples_seen(client: TestClient) -> dict[str, int]:
    return {c["key"]: c["examples_seen"] for c in client.get("/contexts").json()["items"]}


def test_replayed_rows_are_never_counted_and_the_buffer_survives_a_restart(make_settings) -> None:
    settings = make_settings(
        replay={"rows": 1000, "per_step": 16},
        checkpoint={"every_steps": 1000, "every_seconds": 60},
        # The buffer is read in this process, so the steps must run here too.
        training={"batch_size": 32, "steps_in": "thread"},
    )
    rng = np.random.default_rng(0)
    with TestClient(create_app(settings)) as client:
        for key in ("a", "b"):
            assert client.post("/contexts", json={"key": key}).status_code == 201
        for _ in range(3):
            _train(client, "a", 20, rng)
        for _ in range(4):  # every step of b also replays 16 rows, most of them a's
            _train(client, "b", 10, rng)
        replay = _runtime(client).shards[0].host.learner.replay
        assert replay is not None and len(replay) == 100
        saved = replay.state_tensors()[0]
    with TestClient(create_app(settings)) as client:  # the shutdown checkpoint counted them
        assert _examples_seen(client) == {"a": 60, "b": 40}
        restored = _runtime(client).shards[0].host.learner.replay
        assert restored is not None
        for name, tensor in restored.state_tensors()[0].items():
            assert np.array_equal(tensor.numpy(), saved[name].numpy()), name


def test_a_deleted_context_leaves_the_buffer_and_stays_out(make_settings) -> None:
    settings = make_settings(
        replay={"rows": 1000, "per_step": 8},
        checkpoint={"every_steps": 1000, "every_seconds": 0.2},
    )
    rng = np.random.default_rng(1)
    with TestClient(create_app(settings)) as client:
        indices = {
            key: client.post("/contexts", json={"key": key}).json()["index"] for key in ("a", "b")
        }
        _train(client, "a", 30, rng)
        _train(client, "b", 30, rng)
        host = _runtime(client).shards[0].host
        assert host.remembered_contexts() == set(indices.values())
        # Accepted before the delete, trained after it: its rows must not come back.
        client.post("/train/b", json={"inputs": rng.random((5, 64)).tolist(), "labels": [1] * 5})
        assert client.delete("/contexts/b").status_code == 204
        _train(client, "a", 30, rng)  # after b's queued rows, and past a checkpoint
        deadline_checks = 0
        while host.remembered_contexts() != {indices["a"]} and deadline_checks < 50:
            _train(client, "a", 1, rng)
            deadline_checks += 1
        assert host.remembered_contexts() == {indices["a"]}
    with TestClient(create_app(settings)) as client:
        assert _runtime(client).shards[0].host.remembered_contexts() == {indices["a"]}


def test_replay_off_keeps_no_rows(make_settings) -> None:
    settings = make_settings(
        replay={"rows": 0},
        # The learner that steps is read in this process, so the steps must run here too.
        training={"steps_in": "thread"},
    )
    with TestClient(create_app(settings)) as client:
        host = _runtime(client).shards[0].host
        # A value no step reports, so that the zero read below comes from the step.
        REPLAY_ROWS.labels("0").set(-1)
        assert client.post("/contexts", json={"key": "a"}).status_code == 201
        _train(client, "a", 10, np.random.default_rng(2))
        assert host.model_version >= 1  # the rows were learned by this learner
        assert host.learner.replay is None
        assert REPLAY_ROWS.labels("0")._value.get() == 0
        assert client.get("/model").json()["training"]["replay_rows"] == 0
