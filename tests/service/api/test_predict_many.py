"""POST /predict with items for many contexts: one forward pass, the same answers as one by one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api.auth import issue_key
from service.app import create_app
from service.settings import Settings
from tests.service.api.helpers import register, rows, snapshot, sqlite_settings
from tests.service.api.test_feedback import varied_rows


def test_items_match_single_context_predictions(app_client: TestClient) -> None:
    for key in ("a", "b"):
        register(app_client, key)
        app_client.post(
            f"/train/{key}?wait=true", json={"inputs": varied_rows(8), "labels": [1] * 8}
        )
    items = [
        {"context": "a", "inputs": varied_rows(3)},
        {"context": "b", "inputs": varied_rows(2)},
        {"context": "a", "inputs": rows(1)},
    ]
    response = app_client.post("/predict", json={"items": items})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [item["context"] for item in body["items"]] == ["a", "b", "a"]
    for item, answer in zip(items, body["items"], strict=True):
        single = app_client.post(f"/predict/{item['context']}", json={"inputs": item["inputs"]})
        assert answer["predictions"] == single.json()["predictions"]
        for got, want in zip(answer["probabilities"], single.json()["probabilities"], strict=True):
            assert max(abs(g - w) for g, w in zip(got, want, strict=True)) < 1e-5


def test_one_forward_pass_for_all_items(app_client: TestClient) -> None:
    register(app_client, "a")
    register(app_client, "b")
    host = app_client.app.state.runtime.shards[0].host  # type: ignore[attr-defined]
    calls: list[int] = []
    original = host.forward

    def counting(inputs, rows_):  # type: ignore[no-untyped-def]
        calls.append(len(inputs))
        return original(inputs, rows_)

    host.forward = counting
    items = [{"context": k, "inputs": rows(2)} for k in ("a", "b", "a", "b")]
    assert app_client.post("/predict", json={"items": items}).status_code == 200
    assert calls == [8]


def test_an_unknown_context_is_404_and_a_bad_item_422(app_client: TestClient) -> None:
    register(app_client, "a")
    before = snapshot(app_client)
    missing = app_client.post(
        "/predict",
        json={"items": [{"context": "a", "inputs": rows(1)}, {"context": "zz", "inputs": rows(1)}]},
    )
    assert missing.status_code == 404 and "'zz'" in missing.json()["detail"]
    bad = app_client.post(
        "/predict",
        json={
            "items": [{"context": "a", "inputs": rows(1)}, {"context": "a", "inputs": [[1.0] * 3]}]
        },
    )
    assert bad.status_code == 422 and bad.json()["detail"].startswith("items[1]: ")
    assert snapshot(app_client) == before


def test_too_many_rows_together_is_413(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = sqlite_settings(tmp_path, limits={"max_rows": 4})
    with TestClient(create_app(settings)) as client:
        register(client, "a")
        items = [{"context": "a", "inputs": rows(3)}, {"context": "a", "inputs": rows(2)}]
        response = client.post("/predict", json={"items": items})
    assert response.status_code == 413 and "5 rows" in response.json()["detail"]


def test_a_prefixed_key_may_not_reach_other_contexts(make_settings) -> None:  # type: ignore[no-untyped-def]
    key, spec = issue_key(["predict", "admin"], key_prefix="shop-")
    settings: Settings = make_settings(api_keys=[json.loads(spec.model_dump_json())])
    with TestClient(create_app(settings)) as client:
        headers = {"X-API-Key": key}
        assert client.post("/contexts", json={"key": "shop-1"}, headers=headers).status_code == 201
        own = [{"context": "shop-1", "inputs": rows(1)}]
        other = [*own, {"context": "rival-1", "inputs": rows(1)}]
        assert client.post("/predict", json={"items": own}, headers=headers).status_code == 200
        refused = client.post("/predict", json={"items": other}, headers=headers)
    assert refused.status_code == 403 and "rival-1" in refused.json()["detail"]


@pytest.fixture
def unscaled_client(tmp_path: Path) -> Iterator[TestClient]:
    """A model that feeds inputs in as they are, so that extreme rows overflow it."""
    model = {"kind": "complex", "input_shape": [64], "hidden": [32], "input_scaling": "none"}
    with TestClient(create_app(sqlite_settings(tmp_path, model=model))) as client:
        yield client


def _overflowing_rows() -> list[list[float]]:
    """32 rows of +-3.4e38 with random signs: in some row a hidden unit's sum passes the
    largest float32 whatever the order of its products. (Rows of one value and one sign need
    not: their products cancel, and a saturated answer is finite.)"""
    signs = np.random.default_rng(0).choice([-3.4e38, 3.4e38], size=(32, 64))
    return signs.tolist()


def test_an_item_whose_rows_overflow_is_named_and_nothing_else_fails(
    unscaled_client: TestClient,
) -> None:
    register(unscaled_client, "a")
    items = [{"context": "a", "inputs": rows(1)}, {"context": "a", "inputs": _overflowing_rows()}]
    refused = unscaled_client.post("/predict", json={"items": items})
    assert refused.status_code == 422
    detail = refused.json()["detail"]
    assert detail.startswith("items[1]: inputs row ") and "gives a non-finite output" in detail
    alone = unscaled_client.post("/predict", json={"items": items[:1]})
    assert alone.status_code == 200


def test_a_single_context_request_whose_rows_overflow_is_422(unscaled_client: TestClient) -> None:
    register(unscaled_client, "a")
    refused = unscaled_client.post("/predict/a", json={"inputs": _overflowing_rows()})
    assert refused.status_code == 422, refused.text
    assert "too large for the model" in refused.json()["detail"]


def test_extreme_rows_of_a_scaled_model_are_answered(app_client: TestClient) -> None:
    register(app_client, "a")
    answer = app_client.post("/predict/a", json={"inputs": rows(2, 3e38)})
    assert answer.status_code == 200, answer.text
