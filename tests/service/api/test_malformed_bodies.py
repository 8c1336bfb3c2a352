"""Bodies that are well-formed JSON or msgpack but hold what no number type can: each answers
422 with a sentence, never a 500, and changes nothing."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest
from fastapi.testclient import TestClient

from tests.service.api.helpers import register, rows, snapshot

HUGE = "1" + "0" * 400
"""An integer with 401 digits: valid JSON, beyond every float and integer type."""

JSON = {"content-type": "application/json"}
MSGPACK = {"content-type": "application/msgpack"}


def _row_with(value: str) -> str:
    return "[" + ",".join(["0.5"] * 63 + [value]) + "]"


def _tensor(**fields: Any) -> dict[str, Any]:
    return {"name": "INPUT", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64, **fields}


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/predict/a", f'{{"inputs": [{_row_with(HUGE)}]}}', "too large"),
        ("/predict/a", f'{{"inputs": [{_row_with("-" + HUGE)}]}}', "too large"),
        ("/train/a", f'{{"inputs": [{_row_with(HUGE)}], "labels": [1]}}', "too large"),
        ("/train/a", f'{{"inputs": {rows(1)}, "labels": [{HUGE}]}}', "out of range"),
        (
            "/predict",
            f'{{"items": [{{"context": "a", "inputs": [{_row_with(HUGE)}]}}]}}',
            "items[0]",
        ),
        ("/feedback/a", f'{{"prediction_ids": ["p"], "labels": [{HUGE}]}}', "out of range"),
        (
            "/v2/models/a/infer",
            json.dumps({"inputs": [_tensor(data=[0.5] * 63)]})[:-4] + f", {HUGE}]}}]}}",
            "too large",
        ),
    ],
)
def test_a_400_digit_number_is_a_422(client: TestClient, path: str, body: str, expected) -> None:
    register(client, "a")
    before = snapshot(client)
    response = client.post(path, content=body, headers=JSON)
    assert response.status_code == 422, response.text
    assert expected in response.json()["detail"]
    assert snapshot(client) == before


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"inputs": rows(1), "labels": [2**64 - 1]}, "out of range"),
        ({"inputs": [[2**64 - 1] * 64], "labels": [1]}, None),  # a large but finite float32
        ({"inputs": [[-(2**63)] * 64], "labels": [1]}, None),
    ],
)
def test_msgpack_integers_at_the_edges(client: TestClient, body, expected) -> None:
    register(client, "a")
    response = client.post("/train/a", content=msgpack.packb(body), headers=MSGPACK)
    if expected is None:
        assert response.status_code == 202, response.text
    else:
        assert response.status_code == 422, response.text
        assert expected in response.json()["detail"]


@pytest.mark.parametrize(
    ("request_body", "expected"),
    [
        ({"inputs": [_tensor(parameters=[1])]}, "parameters"),
        ({"inputs": [_tensor()], "parameters": [1]}, "parameters"),
        ({"inputs": [_tensor()], "outputs": [{"name": ["x"]}]}, "outputs"),
        ({"inputs": [_tensor()], "outputs": {"name": "PREDICTIONS"}}, "outputs"),
        ({"inputs": [_tensor()], "outputs": ["PREDICTIONS"]}, "outputs"),
        ({"inputs": [_tensor()], "id": 7}, "id"),
        ({"inputs": [_tensor(name=["INPUT"])]}, "name"),
        ({"inputs": [_tensor(parameters={"binary_data_size": "x"})]}, "binary_data_size"),
        ({"inputs": [_tensor(parameters={"binary_data_size": True})]}, "binary_data_size"),
        ({"inputs": [_tensor(data={"a": 1})]}, "data"),
        ({"inputs": [_tensor(data=["0.5"] * 64)]}, "numbers"),
        ({"inputs": [_tensor(data=[True] * 64)]}, "numbers"),
        ({"inputs": [_tensor(shape=[1, 10**30])]}, "shape"),
        ({"inputs": [_tensor(shape=[2, 32])]}, "shape"),
    ],
)
def test_malformed_infer_requests_are_422(client: TestClient, request_body, expected) -> None:
    register(client, "a")
    response = client.post("/v2/models/a/infer", json=request_body)
    assert response.status_code == 422, response.text
    assert expected in response.json()["detail"]


def test_a_well_formed_infer_request_still_answers(client: TestClient) -> None:
    register(client, "a")
    body = {"id": "r1", "inputs": [_tensor()], "outputs": [{"name": "PREDICTIONS"}]}
    answer = client.post("/v2/models/a/infer", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["id"] == "r1"
    assert [o["name"] for o in answer.json()["outputs"]] == ["PREDICTIONS"]


@pytest.mark.parametrize(
    "inputs",
    [[["0.5"] * 64], [[True] * 64], [[None] * 64], [[[0.5]] * 64]],
    ids=["strings", "booleans", "nulls", "lists"],
)
def test_inputs_must_be_numbers(client: TestClient, inputs) -> None:
    register(client, "a")
    response = client.post("/predict/a", json={"inputs": inputs})
    assert response.status_code == 422, response.text
    assert "numbers" in response.json()["detail"] or "shape" in response.json()["detail"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/contexts", {"key": "s", "seed": "5"}),
        ("/contexts", {"key": "s", "seed": True}),
        ("/contexts", {"key": "s", "seed": 5.0}),
        ("/model/rollback", {"version": True}),
        ("/model/rollback", {"version": "0"}),
    ],
)
def test_numbers_are_not_read_from_strings_or_booleans(client: TestClient, path, body) -> None:
    """As the OpenAPI schema says; msgpack bodies reach validation as they are, so JSON and
    msgpack answer alike."""
    before = snapshot(client)
    for content, headers in ((json.dumps(body).encode(), JSON), (msgpack.packb(body), MSGPACK)):
        response = client.post(path, content=content, headers=headers)
        assert response.status_code == 422, response.text
    assert snapshot(client) == before
