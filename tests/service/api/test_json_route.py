"""Bodies parsed by orjson, with non-standard JSON still answered precisely."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.service.api.helpers import register, rows, snapshot


def _post(client: TestClient, path: str, text: str):  # type: ignore[no-untyped-def]
    return client.post(path, content=text, headers={"content-type": "application/json"})


def test_standard_bodies_train_and_predict(client: TestClient) -> None:
    register(client, "a")
    inputs = ",".join("[" + ",".join(["0.25"] * 64) + "]" for _ in range(2))
    trained = _post(client, "/train/a?wait=true", f'{{"inputs": [{inputs}], "labels": [1, 2]}}')
    assert trained.status_code == 200 and trained.json()["model_version"] == 1
    predicted = _post(client, "/predict/a", f'{{"inputs": [{inputs}]}}')
    assert predicted.status_code == 200 and len(predicted.json()["predictions"]) == 2


def test_nan_and_infinity_literals_get_the_precise_answer(client: TestClient) -> None:
    register(client, "a")
    before = snapshot(client)
    for literal in ("NaN", "Infinity", "-Infinity"):
        row = ",".join(["0.5"] * 63 + [literal])
        answer = _post(client, "/train/a", f'{{"inputs": [[{row}]], "labels": [1]}}')
        assert answer.status_code == 422
        assert "holds NaN or Infinity; send finite numbers only" in answer.json()["detail"]
    assert snapshot(client) == before


def test_malformed_json_is_still_a_422_that_says_so(client: TestClient) -> None:
    register(client, "a")
    answer = _post(client, "/predict/a", '{"inputs": [[0.5, ')
    assert answer.status_code == 422
    assert "JSON" in answer.json()["detail"]
    # A 2**70 label is beyond orjson's integers; the standard parser reads it, and validation
    # names it as out of range.
    huge = _post(client, "/train/a", f'{{"inputs": {rows(1)}, "labels": [{2**70}]}}')
    assert huge.status_code == 422 and "labels" in huge.json()["detail"]
