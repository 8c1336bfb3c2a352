"""Delayed labels: POST /predict/{key}?remember=true, then POST /feedback/{key}."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis
import torch
from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.api.helpers import register, rows, snapshot, sqlite_settings


def varied_rows(n: int) -> list[list[float]]:
    return [[((i * 7 + j) % 11) / 10 for j in range(64)] for i in range(n)]


def remember(client: TestClient, key: str, inputs: list[list[float]]) -> dict[str, Any]:
    response = client.post(f"/predict/{key}?remember=true", json={"inputs": inputs})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_remember_returns_one_id_per_row_and_plain_predict_none(app_client: TestClient) -> None:
    register(app_client, "t")
    body = remember(app_client, "t", rows(3))
    assert len(body["prediction_ids"]) == 3 and len(set(body["prediction_ids"])) == 3
    assert len(body["predictions"]) == 3
    plain = app_client.post("/predict/t", json={"inputs": rows(3)}).json()
    assert "prediction_ids" not in plain
    assert plain["probabilities"] == body["probabilities"]


def test_feedback_queues_once_and_scores_the_predictions(app_client: TestClient) -> None:
    register(app_client, "t")
    body = remember(app_client, "t", varied_rows(4))
    predicted = body["predictions"]
    labels = [predicted[0], predicted[1], (predicted[2] + 1) % 10, (predicted[3] + 1) % 10]
    response = app_client.post(
        "/feedback/t?wait=true", json={"prediction_ids": body["prediction_ids"], "labels": labels}
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["accepted"] == 4 and answer["correct"] == 2 and answer["applied"] is True
    before = snapshot(app_client)
    again = app_client.post(
        "/feedback/t", json={"prediction_ids": body["prediction_ids"][:2], "labels": labels[:2]}
    )
    assert again.status_code == 409
    assert all(i in again.json()["detail"] for i in body["prediction_ids"][:2])
    assert snapshot(app_client) == before


def test_unknown_ids_are_404_listed_and_change_nothing(app_client: TestClient) -> None:
    register(app_client, "t")
    body = remember(app_client, "t", rows(2))
    context_index = app_client.get("/contexts/t").json()["index"]
    forged = f"p{context_index:x}.{int(time.time() * 1000):x}.0123456789abcdef"
    before = snapshot(app_client)
    for bad in (forged, "not-an-id"):
        response = app_client.post(
            "/feedback/t",
            json={"prediction_ids": [body["prediction_ids"][0], bad], "labels": [1, 2]},
        )
        assert response.status_code == 404, response.text
        assert bad in response.json()["detail"]
    assert snapshot(app_client) == before
    # The good id was not used up by the rejected calls.
    ok = app_client.post(
        "/feedback/t", json={"prediction_ids": body["prediction_ids"], "labels": [1, 2]}
    )
    assert ok.status_code == 202


def test_an_id_of_another_context_is_422(app_client: TestClient) -> None:
    register(app_client, "a")
    register(app_client, "b")
    body = remember(app_client, "a", rows(1))
    before = snapshot(app_client)
    response = app_client.post(
        "/feedback/b", json={"prediction_ids": body["prediction_ids"], "labels": [0]}
    )
    assert response.status_code == 422
    assert body["prediction_ids"][0] in response.json()["detail"]
    assert snapshot(app_client) == before


BAD_BODIES = {
    "length mismatch": ({"prediction_ids": ["x", "y"], "labels": [1]}, "one label per row"),
    "label out of range": ({"prediction_ids": ["x"], "labels": [10]}, "out of range"),
    "repeated id": ({"prediction_ids": ["x", "x"], "labels": [1, 1]}, "repeats"),
    "empty": ({"prediction_ids": [], "labels": []}, "prediction_ids"),
}


@pytest.mark.parametrize("case", list(BAD_BODIES), ids=list(BAD_BODIES))
def test_bad_feedback_bodies_are_422(app_client: TestClient, case: str) -> None:
    register(app_client, "t")
    body, fragment = BAD_BODIES[case]
    response = app_client.post("/feedback/t", json=body)
    assert response.status_code == 422
    assert fragment in response.json()["detail"] and "send" in response.json()["detail"]


def test_expired_ids_are_410(tmp_path: Path) -> None:
    settings = sqlite_settings(tmp_path, feedback={"ttl_seconds": 0.3})
    with TestClient(create_app(settings)) as client:
        register(client, "t")
        body = remember(client, "t", rows(2))
        time.sleep(0.5)
        response = client.post(
            "/feedback/t", json={"prediction_ids": body["prediction_ids"], "labels": [1, 1]}
        )
    assert response.status_code == 410
    assert all(i in response.json()["detail"] for i in body["prediction_ids"])


def test_rows_pushed_out_by_the_cap_are_410(tmp_path: Path) -> None:
    settings = sqlite_settings(tmp_path, feedback={"max_rows": 2, "context_share": 1.0})
    with TestClient(create_app(settings)) as client:
        register(client, "t")
        first = remember(client, "t", rows(1))["prediction_ids"]
        time.sleep(0.01)
        newer = remember(client, "t", rows(2))["prediction_ids"]
        pushed = client.post("/feedback/t", json={"prediction_ids": first, "labels": [1]})
        kept = client.post("/feedback/t", json={"prediction_ids": newer, "labels": [1, 2]})
    assert pushed.status_code == 410 and first[0] in pushed.json()["detail"]
    assert kept.status_code == 202


def test_a_full_queue_leaves_the_ids_usable(tmp_path: Path) -> None:
    settings = sqlite_settings(tmp_path, queue={"max_pending_examples": 2})
    with TestClient(create_app(settings)) as client:
        register(client, "t")
        ids = remember(client, "t", rows(3))["prediction_ids"]
        for _ in range(2):  # the second answer is 429 again, not 409: nothing was used up
            response = client.post("/feedback/t", json={"prediction_ids": ids, "labels": [0] * 3})
            assert response.status_code == 429


def weights(client: TestClient) -> dict[str, torch.Tensor]:
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    return {k: v.clone() for k, v in runtime.shards[0].host.learner.model.state_dict().items()}


def test_feedback_trains_exactly_as_post_train_would(tmp_path: Path) -> None:
    inputs, labels = varied_rows(40), [i % 10 for i in range(40)]
    deterministic = {"deterministic": True, "batch_size": 32}
    with TestClient(
        create_app(sqlite_settings(tmp_path / "feedback", training=deterministic))
    ) as client:
        register(client, "t", seed=777)
        ids = remember(client, "t", inputs)["prediction_ids"]
        done = client.post("/feedback/t?wait=true", json={"prediction_ids": ids, "labels": labels})
        assert done.json()["applied"] is True
        after_feedback = weights(client)
    with TestClient(
        create_app(sqlite_settings(tmp_path / "train", training=deterministic))
    ) as client:
        register(client, "t", seed=777)
        before = weights(client)
        done = client.post("/train/t?wait=true", json={"inputs": inputs, "labels": labels})
        assert done.json()["applied"] is True
        after_train = weights(client)
    assert any(not torch.equal(before[k], after_train[k]) for k in before)
    for name, tensor in after_train.items():
        assert torch.equal(tensor, after_feedback[name]), name


def test_redis_store_keeps_rows_with_the_ttl(
    tmp_path: Path, redis_url: str, key_prefix: str
) -> None:
    settings = sqlite_settings(
        tmp_path, redis_url=redis_url, key_prefix=key_prefix, feedback={"ttl_seconds": 600}
    )
    with TestClient(create_app(settings)) as client:
        register(client, "t")
        ids = remember(client, "t", varied_rows(3))["prediction_ids"]
        with redis.Redis.from_url(redis_url) as plain:
            ttl_ms = plain.pttl(f"{key_prefix}feedback:{ids[0]}")
        assert 590_000 < ttl_ms <= 600_000
        first = client.post(
            "/feedback/t?wait=true", json={"prediction_ids": ids, "labels": [1, 2, 3]}
        )
        assert first.status_code == 200 and first.json()["accepted"] == 3
        again = client.post("/feedback/t", json={"prediction_ids": ids, "labels": [1, 2, 3]})
        assert again.status_code == 409
        forged = ids[0].rsplit(".", 1)[0] + ".0123456789abcdef"
        unknown = client.post("/feedback/t", json={"prediction_ids": [forged], "labels": [1]})
        assert unknown.status_code == 404 and forged in unknown.json()["detail"]
