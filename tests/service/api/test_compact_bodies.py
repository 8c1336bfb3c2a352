"""msgpack and gzip request bodies for train and predict."""

from __future__ import annotations

import gzip

import msgpack
import orjson
from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.api.helpers import register, rows, snapshot, sqlite_settings

MSGPACK = {"content-type": "application/msgpack"}


def test_msgpack_predict_matches_json(app_client: TestClient) -> None:
    register(app_client, "t")
    body = {"inputs": rows(3, 0.25)}
    packed = app_client.post("/predict/t", content=msgpack.packb(body), headers=MSGPACK)
    plain = app_client.post("/predict/t", json=body)
    assert packed.status_code == 200, packed.text
    assert packed.json() == plain.json()


def test_msgpack_and_gzip_train_bodies_are_learned(app_client: TestClient) -> None:
    register(app_client, "t")
    body = {"inputs": rows(4), "labels": [1, 2, 3, 4]}
    for content, headers in (
        (msgpack.packb(body), MSGPACK),
        (
            gzip.compress(orjson.dumps(body)),
            {"content-type": "application/json", "content-encoding": "gzip"},
        ),
        (gzip.compress(msgpack.packb(body)), {**MSGPACK, "content-encoding": "gzip"}),
    ):
        response = app_client.post("/train/t?wait=true", content=content, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["accepted"] == 4 and response.json()["applied"] is True


def test_broken_bodies_are_422_and_change_nothing(app_client: TestClient) -> None:
    register(app_client, "t")
    before = snapshot(app_client)
    broken_msgpack = app_client.post("/train/t", content=b"\xc1\xc1", headers=MSGPACK)
    assert broken_msgpack.status_code == 422
    assert "not valid msgpack" in broken_msgpack.json()["detail"]
    broken_gzip = app_client.post(
        "/train/t",
        content=b"not gzip",
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert broken_gzip.status_code == 422 and "not valid gzip" in broken_gzip.json()["detail"]
    assert snapshot(app_client) == before


def test_a_gzip_bomb_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = sqlite_settings(tmp_path, limits={"max_body_bytes": 4096})
    bomb = gzip.compress(b" " * 100_000)
    assert len(bomb) < 4096
    with TestClient(create_app(settings)) as client:
        register(client, "t")
        response = client.post(
            "/predict/t",
            content=bomb,
            headers={"content-type": "application/json", "content-encoding": "gzip"},
        )
    assert response.status_code == 422 and "larger than the limit" in response.json()["detail"]
