"""POST /train/{key}: every answer code, and nothing changes after a rejection."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from service.app import create_app
from tests.service.api.helpers import WIDTH, register, rows, snapshot, wait_for_version


def test_accepted_batch_is_202_with_a_batch_id(client: TestClient) -> None:
    register(client, "t")
    response = client.post("/train/t", json={"inputs": rows(3), "labels": [1, 2, 3]})
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 3 and "-" in body["batch_id"]


def test_wait_true_answers_200_once_applied(client: TestClient) -> None:
    register(client, "t")
    version = client.get("/model").json()["model_version"]
    response = client.post("/train/t?wait=true", json={"inputs": rows(40), "labels": [1] * 40})
    assert response.status_code == 200
    body = response.json()
    # 40 rows at batch size 32 are two steps.
    assert body["applied"] is True and body["model_version"] == version + 2
    assert client.get("/model").json()["model_version"] == version + 2


def test_nested_rows_are_accepted(make_settings) -> None:
    settings = make_settings(
        model={"kind": "binary", "arch": "convnet", "input_shape": [1, 8, 8], "hidden": [4]}
    )
    with TestClient(create_app(settings)) as client:
        register(client, "img")
        nested = [[[[0.1] * 8 for _ in range(8)]]]
        response = client.post("/train/img?wait=true", json={"inputs": nested, "labels": [2]})
        assert response.status_code == 200
        flat = client.post("/predict/img", json={"inputs": [[0.1] * 64]}).json()
        shaped = client.post("/predict/img", json={"inputs": nested}).json()
        assert flat == shaped


def test_unknown_context_is_404(client: TestClient) -> None:
    before = snapshot(client)
    response = client.post("/train/nobody", json={"inputs": rows(1), "labels": [0]})
    assert response.status_code == 404
    assert snapshot(client) == before


BAD_BODIES = {
    "wrong width": ({"inputs": rows(2, width=63), "labels": [0, 1]}, "shape"),
    "ragged rows": ({"inputs": [[0.0] * 64, [0.0] * 3], "labels": [0, 1]}, "rectangular"),
    "label too big": ({"inputs": rows(2), "labels": [0, 10]}, "out of range"),
    "negative label": ({"inputs": rows(1), "labels": [-1]}, "out of range"),
    "float label": ({"inputs": rows(1), "labels": [1.5]}, "labels[0]"),
    "string label": ({"inputs": rows(1), "labels": ["1"]}, "labels[0]"),
    "length mismatch": ({"inputs": rows(3), "labels": [0, 1]}, "one label per row"),
    "empty batch": ({"inputs": [], "labels": []}, "inputs"),
    "no labels": ({"inputs": rows(1)}, "labels"),
    "string inputs": ({"inputs": [["a"] * 64], "labels": [0]}, "numbers"),
    "unknown field": ({"inputs": rows(1), "labels": [0], "weights": 1}, "weights"),
}


@pytest.mark.parametrize("case", list(BAD_BODIES), ids=list(BAD_BODIES))
def test_bad_body_is_422_and_changes_nothing(client: TestClient, case: str) -> None:
    register(client, "t")
    before = snapshot(client)
    body, fragment = BAD_BODIES[case]
    response = client.post("/train/t", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert fragment in detail and "send" in detail
    assert snapshot(client) == before


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_inputs_are_422_and_change_nothing(client: TestClient, literal: str) -> None:
    register(client, "t")
    before = snapshot(client)
    row = json.dumps(rows(1)[0]).replace("0.5", literal, 1)
    body = f'{{"inputs": [{row}], "labels": [0]}}'.encode()
    response = client.post(
        "/train/t?wait=true", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert "NaN or Infinity" in response.json()["detail"]
    assert snapshot(client) == before
    assert not any(math.isnan(v) for v in [before[1]])


def test_malformed_json_is_422(client: TestClient) -> None:
    register(client, "t")
    response = client.post(
        "/train/t", content=b"{inputs: [", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert "not valid JSON" in response.json()["detail"]


def test_too_many_rows_is_413(make_settings) -> None:
    with TestClient(create_app(make_settings(limits={"max_rows": 4}))) as client:
        register(client, "t")
        before = snapshot(client)
        response = client.post("/train/t", json={"inputs": rows(5), "labels": [0] * 5})
        assert response.status_code == 413
        assert "at most 4 rows" in response.json()["detail"]
        assert snapshot(client) == before


def test_body_over_the_size_limit_is_413(make_settings) -> None:
    with TestClient(create_app(make_settings(limits={"max_body_bytes": 4096}))) as client:
        register(client, "t")
        before = snapshot(client)
        response = client.post("/train/t", json={"inputs": rows(20), "labels": [0] * 20})
        assert response.status_code == 413
        assert "4096 bytes" in response.json()["detail"]

        def chunks():  # no Content-Length: the limit is enforced while streaming
            yield b'{"inputs": ['
            for _ in range(40):
                yield json.dumps(rows(1)[0]).encode() + b","
            yield b'[0.0]], "labels": [0]}'

        streamed = client.post(
            "/train/t", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413
        assert snapshot(client) == before


def test_full_queue_is_429_with_retry_after(make_settings) -> None:
    # One context may fill the whole queue here: the total, not the share, is under test.
    queue = {"max_pending_examples": 5, "retry_after_seconds": 3, "context_share": 1.0}
    settings = make_settings(queue=queue)
    with TestClient(create_app(settings)) as client:
        register(client, "t")
        before = snapshot(client)
        response = client.post("/train/t", json={"inputs": rows(6), "labels": [0] * 6})
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "3"
        assert "retry after 3 s" in response.json()["detail"]
        assert snapshot(client) == before
        ok = client.post("/train/t?wait=true", json={"inputs": rows(5), "labels": [0] * 5})
        assert ok.status_code == 200


def test_idempotency_key_queues_a_retried_batch_once(client: TestClient) -> None:
    register(client, "t")
    body = {"inputs": rows(3), "labels": [1, 2, 3]}
    headers = {"Idempotency-Key": "batch-0001"}
    first = client.post("/train/t", json=body, headers=headers).json()
    retry = client.post("/train/t", json=body, headers=headers).json()
    assert retry == first
    applied = client.post("/train/t?wait=true", json=body).json()
    client.portal.call(client.app.state.runtime.shards[0].trainer.checkpoint)  # type: ignore[attr-defined]
    assert client.get("/contexts/t").json()["examples_seen"] == 6
    assert applied["model_version"] == 2
    bad = client.post("/train/t", json=body, headers={"Idempotency-Key": "no spaces"})
    assert bad.status_code == 422


def test_an_idempotency_key_with_another_batch_is_refused_and_counted_once(
    client: TestClient,
) -> None:
    register(client, "t")
    register(client, "u")
    headers = {"Idempotency-Key": "batch-0002"}
    accepted = REGISTRY.get_sample_value("psp_train_accepted_examples_total") or 0.0
    version = client.app.state.runtime.shards[0].host.model_version  # type: ignore[attr-defined]
    first = client.post("/train/t", json={"inputs": rows(1), "labels": [1]}, headers=headers)
    assert first.status_code == 202
    for _ in range(3):
        retry = client.post("/train/t", json={"inputs": rows(1), "labels": [1]}, headers=headers)
        assert retry.json() == first.json()
    counted = REGISTRY.get_sample_value("psp_train_accepted_examples_total")
    assert counted == accepted + 1
    wait_for_version(client, version + 1)  # the accepted row trains in the background
    before = snapshot(client)
    for path, body in [
        ("/train/t", {"inputs": rows(3, 0.2), "labels": [1, 2, 3]}),
        ("/train/u", {"inputs": rows(1), "labels": [1]}),
    ]:
        mismatch = client.post(path, json=body, headers=headers)
        assert mismatch.status_code == 422
        assert "first used with a different batch" in mismatch.json()["detail"]
    assert snapshot(client) == before


def test_wait_says_when_the_trainer_refused_the_step(make_settings) -> None:
    # Without input scaling nothing bounds the rows, so the overflowing step is refused.
    settings = make_settings(
        model={"kind": "complex", "input_shape": [64], "hidden": [32], "input_scaling": "none"}
    )
    with TestClient(create_app(settings)) as client:
        _refused_then_applied(client)


def _refused_then_applied(client: TestClient) -> None:
    register(client, "t", seed=11)  # a fixed seed and model: the same step every run
    # Rows of +-3.4e38 with random signs: some hidden unit overflows to infinity for certain.
    signs = np.random.default_rng(0).choice([-3.4e38, 3.4e38], size=(32, WIDTH))
    huge = {"inputs": signs.tolist(), "labels": [1] * 32}
    answer = client.post("/train/t?wait=true", json=huge)
    assert answer.status_code == 200
    body = answer.json()
    assert body["applied"] is False and body["model_version"] == 0
    assert "not finite" in body["reason"]
    fine = client.post("/train/t?wait=true", json={"inputs": rows(3), "labels": [0, 1, 2]})
    assert (fine.json()["applied"], fine.json()["reason"], fine.json()["model_version"]) == (
        True,
        None,
        1,
    )
    client.portal.call(client.app.state.runtime.shards[0].trainer.checkpoint)  # type: ignore[attr-defined]
    context = client.get("/contexts/t").json()
    assert (context["examples_seen"], context["refused"]) == (3, 32)
