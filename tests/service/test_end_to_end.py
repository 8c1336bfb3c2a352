"""Three tenants learn three permutations of load_digits through HTTP, in one set of weights."""

from __future__ import annotations

import numpy as np
from fastapi.testclient import TestClient
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from service.app import create_app

TENANTS = ["tenant-a", "tenant-b", "tenant-c"]


def _accuracy(client: TestClient, key: str, x: np.ndarray, y: np.ndarray) -> float:
    body = client.post(f"/predict/{key}", json={"inputs": x.tolist()}).json()
    return float(np.mean(np.asarray(body["predictions"]) == y))


def test_each_context_learns_its_own_permutation(make_settings) -> None:
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x / 16.0, y, test_size=0.25, random_state=0, stratify=y
    )
    rng = np.random.default_rng(0)
    perms = [np.arange(64), rng.permutation(64), rng.permutation(64)]
    settings = make_settings(
        model={"kind": "complex", "input_shape": [64], "hidden": [128, 128]},
        training={"batch_size": 32},  # the service's learning defaults
    )
    with TestClient(create_app(settings)) as client:
        for key in TENANTS:
            assert client.post("/contexts", json={"key": key}).status_code == 201
        # Tenants stream their batches interleaved, as they would in production.
        for _ in range(150):
            for key, perm in zip(TENANTS, perms, strict=True):
                batch = rng.integers(0, len(x_train), 32)
                response = client.post(
                    f"/train/{key}?wait=true",
                    json={
                        "inputs": x_train[batch][:, perm].tolist(),
                        "labels": y_train[batch].tolist(),
                    },
                )
                assert response.status_code == 200, response.text
        accuracy = np.array(
            [[_accuracy(client, key, x_test[:, perm], y_test) for perm in perms] for key in TENANTS]
        )
        seen = [client.get(f"/contexts/{key}").json() for key in TENANTS]
    own = np.diag(accuracy)
    neighbours = accuracy[~np.eye(3, dtype=bool)]
    assert own.min() >= 0.8, accuracy
    assert neighbours.max() <= own.min() - 0.3, accuracy
    assert [s["examples_seen"] for s in seen] == [150 * 32] * 3
    assert all(0.3 < s["prequential_accuracy"] < own.min() for s in seen)
