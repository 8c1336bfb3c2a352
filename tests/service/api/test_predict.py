"""POST /predict/{key}."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.service.api.helpers import register, rows, snapshot


def test_predict_returns_predictions_probabilities_and_version(client: TestClient) -> None:
    register(client, "t")
    response = client.post("/predict/t", json={"inputs": rows(3)})
    assert response.status_code == 200
    body = response.json()
    assert len(body["predictions"]) == 3 and len(body["probabilities"]) == 3
    assert all(len(p) == 10 and abs(sum(p) - 1) < 1e-5 for p in body["probabilities"])
    assert body["predictions"][0] == max(range(10), key=lambda c: body["probabilities"][0][c])
    assert body["model_version"] == 0


def test_contexts_answer_differently(client: TestClient) -> None:
    register(client, "a")
    register(client, "b")
    x = {"inputs": rows(1, value=0.9)}
    assert (
        client.post("/predict/a", json=x).json()["probabilities"]
        != client.post("/predict/b", json=x).json()["probabilities"]
    )


def test_predict_unknown_is_404(client: TestClient) -> None:
    assert client.post("/predict/nobody", json={"inputs": rows(1)}).status_code == 404


@pytest.mark.parametrize(
    "body",
    [{"inputs": []}, {"inputs": rows(1, width=3)}, {}, {"inputs": "x"}, {"inputs": [[None] * 64]}],
)
def test_bad_predict_body_is_422(client: TestClient, body) -> None:
    register(client, "t")
    before = snapshot(client)
    response = client.post("/predict/t", json=body)
    assert response.status_code == 422
    assert "send" in response.json()["detail"]
    assert snapshot(client) == before


def test_bad_key_in_path_is_422(client: TestClient) -> None:
    response = client.post("/predict/bad key!", json={"inputs": rows(1)})
    assert response.status_code == 422
