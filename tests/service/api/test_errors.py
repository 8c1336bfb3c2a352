"""Error answers: 405 with a correct Allow header, and hints chosen by what failed."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.service.api.helpers import register, rows


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/predict/x", "POST"),
        ("PUT", "/contexts", "GET, POST"),
        ("POST", "/contexts/a", "GET, DELETE"),
        ("GET", "/model/rollback", "POST"),
        ("DELETE", "/model", "GET"),
    ],
)
def test_405_names_the_allowed_methods(client: TestClient, method, path, allowed) -> None:
    response = client.request(method, path)
    assert response.status_code == 405
    assert response.headers["Allow"] == allowed
    assert response.json()["detail"] == f"{method} is not allowed on {path}; use {allowed}"


def test_a_bad_query_parameter_gets_a_query_hint(client: TestClient) -> None:
    detail = client.get("/contexts", params={"limit": 5000}).json()["detail"]
    assert detail.startswith("query parameter limit:")
    assert "?limit=" in detail and '"key"' not in detail


def test_a_bad_header_gets_a_header_hint(client: TestClient) -> None:
    register(client, "t")
    response = client.post(
        "/train/t",
        json={"inputs": rows(1), "labels": [0]},
        headers={"Idempotency-Key": "no spaces"},
    )
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail.startswith("header parameter idempotency-key:")
    assert "Idempotency-Key header of 1 to 128 characters" in detail and "inputs" not in detail


def test_a_bad_body_still_gets_the_body_example(client: TestClient) -> None:
    detail = client.post("/train/t", json={"inputs": rows(1)}).json()["detail"]
    assert detail.startswith("labels: Field required")
    assert '"labels": [3, ...]' in detail
