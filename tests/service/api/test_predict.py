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


def test_probabilities_false_leaves_them_out(client: TestClient) -> None:
    register(client, "t")
    x = {"inputs": rows(4, value=0.3)}
    full = client.post("/predict/t", json=x).json()
    response = client.post("/predict/t?probabilities=false", json=x)
    assert response.status_code == 200
    assert response.json() == {"predictions": full["predictions"], "model_version": 0}


@pytest.mark.parametrize("k", [1, 3, 10])
def test_top_k_answers_the_most_probable_classes_in_order(client: TestClient, k: int) -> None:
    register(client, "t")
    x = {"inputs": rows(4, value=0.7)}
    full = client.post("/predict/t", json=x).json()
    body = client.post(f"/predict/t?top_k={k}", json=x).json()
    assert set(body) == {"predictions", "top_classes", "top_probabilities", "model_version"}
    for row, probabilities in enumerate(full["probabilities"]):
        ranked = sorted(range(10), key=lambda c: -probabilities[c])[:k]
        assert body["top_classes"][row] == ranked
        assert body["top_classes"][row][0] == body["predictions"][row] == full["predictions"][row]
        assert body["top_probabilities"][row] == pytest.approx([probabilities[c] for c in ranked])
    classes_only = client.post(f"/predict/t?top_k={k}&probabilities=false", json=x).json()
    assert set(classes_only) == {"predictions", "top_classes", "model_version"}
    assert classes_only["top_classes"] == body["top_classes"]


@pytest.mark.parametrize(
    ("query", "hint"),
    [
        ("top_k=0", "?top_k="),
        ("top_k=11", "?top_k= from 1 to 10"),
        ("top_k=two", "?top_k="),
        ("probabilities=maybe", "?probabilities="),
    ],
)
def test_bad_answer_options_are_422_with_a_sentence(client: TestClient, query, hint) -> None:
    register(client, "t")
    before = snapshot(client)
    response = client.post(f"/predict/t?{query}", json={"inputs": rows(1)})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert hint in detail and "send" in detail
    assert snapshot(client) == before


def test_remembered_predictions_take_the_same_answer_options(client: TestClient) -> None:
    register(client, "t")
    x = {"inputs": rows(3, value=0.4)}
    plain = client.post("/predict/t?top_k=2&probabilities=false", json=x).json()
    remembered = client.post("/predict/t?remember=true&top_k=2&probabilities=false", json=x)
    assert remembered.status_code == 200
    body = remembered.json()
    assert set(body) == {"predictions", "top_classes", "model_version", "prediction_ids"}
    assert body["top_classes"] == plain["top_classes"] and len(body["prediction_ids"]) == 3
    too_many = client.post("/predict/t?remember=true&top_k=11", json=x)
    assert too_many.status_code == 422 and "?top_k= from 1 to 10" in too_many.json()["detail"]
