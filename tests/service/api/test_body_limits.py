"""Bodies are counted before they are parsed, lists are capped before any work per item, and
a caller without a valid key gets its 401 before its body is read."""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import orjson
import pytest
from fastapi.testclient import TestClient

from service.api.auth import issue_key
from service.app import create_app
from tests.service.api.helpers import register, rows, snapshot, sqlite_settings

MSGPACK = {"content-type": "application/msgpack"}
JSON = {"content-type": "application/json"}
GZIP_JSON = {**JSON, "content-encoding": "gzip"}
EMPTY_LISTS = 1_000_000
"""A million empty lists: 3 MB of JSON, 1 MB of msgpack, a few KB gzipped; 56 MB as Python
lists, and far beyond what any valid body holds."""


def _json_bomb(count: int = EMPTY_LISTS) -> bytes:
    return b'{"inputs": [' + b"[]," * (count - 1) + b"[]]}"


def _msgpack_bomb(count: int = EMPTY_LISTS) -> bytes:
    return b"\x81" + msgpack.packb("inputs") + b"\xdd" + count.to_bytes(4, "big") + b"\x90" * count


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (_json_bomb(), JSON),
        (gzip.compress(_json_bomb()), GZIP_JSON),
        (_msgpack_bomb(), MSGPACK),
        (gzip.compress(_msgpack_bomb()), {**MSGPACK, "content-encoding": "gzip"}),
        (b'{"items": [' + b"{}," * (EMPTY_LISTS - 1) + b"{}]}", JSON),
    ],
    ids=["json", "gzip-json", "msgpack", "gzip-msgpack", "json-objects"],
)
def test_a_body_of_a_million_empty_containers_is_refused_unparsed(
    app_client: TestClient, body: bytes, headers: dict[str, str]
) -> None:
    register(app_client, "a")
    before = snapshot(app_client)
    for path in ("/predict/a", "/train/a", "/predict", "/contexts:batch"):
        response = app_client.post(path, content=body, headers=headers)
        assert response.status_code == 413, response.text
        detail = response.json()["detail"]
        assert "values" in detail and "split" in detail, detail
    assert snapshot(app_client) == before


def test_the_value_budget_admits_the_largest_valid_bodies(app_client: TestClient) -> None:
    limit = app_client.app.state.runtime.settings.limits.max_rows  # type: ignore[attr-defined]
    body = {"inputs": rows(limit, 0.123456789), "labels": [1] * limit}
    for key, content, headers in (
        ("a", msgpack.packb(body), MSGPACK),
        ("b", gzip.compress(msgpack.packb(body)), {**MSGPACK, "content-encoding": "gzip"}),
        ("c", orjson.dumps(body), JSON),
    ):
        register(app_client, key)  # one context each: a context's share of the queue is capped
        answer = app_client.post(f"/train/{key}", content=content, headers=headers)
        assert answer.status_code == 202, answer.text
    batch = {"contexts": [{"key": f"k{i}", "seed": i} for i in range(10_000)]}
    assert app_client.post("/contexts:batch", json=batch).status_code == 200


def test_a_msgpack_body_with_one_oversized_array_is_refused(app_client: TestClient) -> None:
    register(app_client, "a")
    nils = b"\x81" + msgpack.packb("inputs") + b"\xdd" + (3_000_000).to_bytes(4, "big")
    response = app_client.post("/predict/a", content=nils + b"\xc0" * 3_000_000, headers=MSGPACK)
    assert response.status_code == 413, response.text


KEY, SPEC = issue_key(["admin", "predict", "train"])


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(sqlite_settings(tmp_path, api_keys=[SPEC]))) as client:
        client.post("/contexts", json={"key": "a"}, headers={"X-API-Key": KEY})
        yield client


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        ("/predict/a", b"{not json", JSON),
        ("/train/a", b"\xc1", MSGPACK),
        ("/predict/a", gzip.compress(_json_bomb()), GZIP_JSON),
        ("/contexts", b"{not json", JSON),
        ("/feedback/a", _msgpack_bomb(), MSGPACK),
        ("/v2/models/a/infer", b"{not json", JSON),
    ],
)
def test_without_a_key_the_body_is_never_read(secured: TestClient, path, body, headers) -> None:
    """A malformed or oversized body would be a 422 or a 413; unauthenticated, it is a 401."""
    response = secured.post(path, content=body, headers=headers)
    assert response.status_code == 401, response.text
    assert "API key" in response.json()["detail"]


def test_feedback_ids_are_capped_before_they_are_checked(app_client: TestClient) -> None:
    register(app_client, "a")
    limit = app_client.app.state.runtime.settings.limits.max_rows  # type: ignore[attr-defined]
    body = {"prediction_ids": ["p"] * (limit + 1), "labels": [0] * (limit + 1)}
    response = app_client.post("/feedback/a", json=body)
    assert response.status_code == 413, response.text
    assert f"at most {limit}" in response.json()["detail"]


def test_repeated_feedback_ids_are_listed_once(app_client: TestClient) -> None:
    register(app_client, "a")
    ids = ["p1", "p2", "p1", "p3", "p2", "p1"]
    response = app_client.post("/feedback/a", json={"prediction_ids": ids, "labels": [0] * 6})
    assert response.status_code == 422
    assert "repeats p1, p2;" in response.json()["detail"]


def test_repeated_feedback_ids_are_found_in_linear_time(tmp_path: Path) -> None:
    """50,000 ids, one of them repeated: a check that compares every id with every other
    takes seconds of the event loop (over ten on this size); one pass takes milliseconds."""
    ids = [f"p{i}" for i in range(50_000)]
    ids[-1] = ids[0]
    body = {"prediction_ids": ids, "labels": [0] * len(ids)}
    with TestClient(create_app(sqlite_settings(tmp_path, limits={"max_rows": 50_000}))) as client:
        register(client, "a")
        began = time.perf_counter()
        response = client.post("/feedback/a", json=body)
        took = time.perf_counter() - began
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith("prediction_ids repeats p0;")
    assert took < 2.0, f"{took:.1f} s to find one repeated id among 50,000"


def test_multi_predict_rows_are_counted_before_any_item_is_converted(
    app_client: TestClient,
) -> None:
    register(app_client, "a")
    limit = app_client.app.state.runtime.settings.limits.max_rows  # type: ignore[attr-defined]
    # The last item is malformed: the row count is answered first, before any item is read.
    items = [{"context": "a", "inputs": [[0.5] * 64] * (limit // 2 + 1)} for _ in range(2)]
    items.append({"context": "a", "inputs": [["x"]]})
    response = app_client.post("/predict", json={"items": items})
    assert response.status_code == 413, response.text
    assert "rows together" in response.json()["detail"]


def test_infer_rows_are_capped_before_the_data_is_read(app_client: TestClient) -> None:
    register(app_client, "a")
    limit = app_client.app.state.runtime.settings.limits.max_rows  # type: ignore[attr-defined]
    tensor = {"name": "INPUT", "datatype": "FP32", "shape": [limit + 1, 64], "data": ["x"]}
    response = app_client.post("/v2/models/a/infer", json={"inputs": [tensor]})
    assert response.status_code == 413, response.text
    assert f"at most {limit} rows" in response.json()["detail"]


@pytest.mark.parametrize(
    ("path", "field", "cap"),
    [
        ("/contexts:batch", "contexts", 10_000),
        ("/predict", "items", 1000),
        ("/feedback/a", "prediction_ids", 4096),
        ("/train/a", "labels", 4096),
        ("/predict/a", "inputs", 4096),
    ],
)
def test_a_list_over_its_cap_is_refused_before_any_item_is_read(
    app_client: TestClient, path: str, field: str, cap: int
) -> None:
    """Items that would each fail validation: the cap answers first, without reading one."""
    register(app_client, "a")
    response = app_client.post(path, json={field: [None] * (cap + 1)})
    assert response.status_code == 413, response.text
    assert f"{field} has {cap + 1} " in response.json()["detail"]
    assert f"at most {cap}" in response.json()["detail"]


def test_multi_predict_rows_are_counted_before_any_item_is_read(app_client: TestClient) -> None:
    register(app_client, "a")
    limit = app_client.app.state.runtime.settings.limits.max_rows  # type: ignore[attr-defined]
    items = [{"context": "a", "inputs": [None] * (limit // 2 + 1), "junk": 1} for _ in range(2)]
    response = app_client.post("/predict", json={"items": items})
    assert response.status_code == 413, response.text
    assert "rows together" in response.json()["detail"]
