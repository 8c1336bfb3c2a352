"""POST/GET/DELETE /contexts and POST /contexts:batch, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.api.helpers import register, snapshot
from tests.service.conftest import SettingsFactory


def test_register_returns_201_then_200_with_the_same_body(client: TestClient) -> None:
    first = client.post("/contexts", json={"key": "tenant-1", "seed": 42})
    assert first.status_code == 201
    body = first.json()
    assert body["key"] == "tenant-1" and body["seed"] == 42 and body["power"] is None
    assert body["kind"] == "complex" and body["examples_seen"] == 0
    again = client.post("/contexts", json={"key": "tenant-1", "seed": 42})
    omitted = client.post("/contexts", json={"key": "tenant-1"})
    assert again.status_code == omitted.status_code == 200
    assert again.json() == omitted.json() == body
    assert body["shard"] == 0


def test_server_chooses_a_seed_when_omitted(client: TestClient) -> None:
    a, b = register(client, "a"), register(client, "b")
    assert isinstance(a["seed"], int) and a["seed"] != b["seed"]
    assert b["index"] > a["index"]


def test_different_seed_for_existing_key_is_409_and_changes_nothing(client: TestClient) -> None:
    register(client, "tenant-1", seed=1)
    before = snapshot(client)
    response = client.post("/contexts", json={"key": "tenant-1", "seed": 2})
    assert response.status_code == 409
    assert "tenant-1" in response.json()["detail"]
    assert snapshot(client) == before


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"key": "has space"}, "key"),
        ({"key": "x" * 129}, "key"),
        ({"key": ""}, "key"),
        ({"key": "ok", "seed": -1}, "seed"),
        ({"key": "ok", "seed": 2**63}, "seed"),
        ({"key": "ok", "power": 1.5}, "power"),
        ({"key": "ok", "extra": 1}, "extra"),
        ({"seed": 1}, "key"),
    ],
)
def test_invalid_registration_is_422_with_a_sentence(client: TestClient, body, fragment) -> None:
    before = snapshot(client)
    response = client.post("/contexts", json=body)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert isinstance(detail, str) and fragment in detail and "send" in detail
    assert snapshot(client) == before


def test_malformed_json_is_422(client: TestClient) -> None:
    response = client.post(
        "/contexts", content=b'{"key": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert "not valid JSON" in response.json()["detail"]


def test_get_list_and_paging(client: TestClient) -> None:
    for i in range(5):
        register(client, f"t{i}")
    assert client.get("/contexts/t3").json()["key"] == "t3"
    page = client.get("/contexts", params={"limit": 2, "offset": 1}).json()
    assert page["total"] == 5
    assert [item["key"] for item in page["items"]] == ["t1", "t2"]
    assert client.get("/contexts", params={"limit": -1}).status_code == 422


def test_unknown_key_is_404(client: TestClient) -> None:
    response = client.get("/contexts/nobody")
    assert response.status_code == 404
    assert "POST /contexts" in response.json()["detail"]
    assert client.delete("/contexts/nobody").status_code == 404


def test_delete_stops_answering_and_never_reuses_the_index(client: TestClient) -> None:
    old = register(client, "gone")
    assert client.delete("/contexts/gone").status_code == 204
    assert client.get("/contexts/gone").status_code == 404
    assert client.post("/predict/gone", json={"inputs": [[0.0] * 64]}).status_code == 404
    assert client.get("/contexts").json()["total"] == 0
    new = register(client, "gone")
    assert new["index"] > old["index"]


def test_bulk_registration(client: TestClient) -> None:
    register(client, "k0", seed=5)
    body = {"contexts": [{"key": f"k{i}"} for i in range(200)]}
    response = client.post("/contexts:batch", json=body)
    assert response.status_code == 200
    result = response.json()
    assert result["created"] == 199 and len(result["items"]) == 200
    assert result["items"][0]["seed"] == 5
    assert client.get("/model").json()["contexts"] == 200
    conflict = client.post(
        "/contexts:batch", json={"contexts": [{"key": "new"}, {"key": "k0", "seed": 6}]}
    )
    assert conflict.status_code == 409
    assert client.get("/contexts/new").status_code == 404


def test_onepower_contexts_take_powers(make_settings) -> None:
    from service.app import create_app

    settings = make_settings(model={"kind": "onepower", "input_shape": [64], "hidden": [16]})
    with TestClient(create_app(settings)) as client:
        first = register(client, "p0")
        assert first["power"] == 0.0 and first["seed"] is None
        assert register(client, "drift", power=2.5)["power"] == 2.5
        assert register(client, "p1")["power"] == 1.0
        bad = client.post("/contexts", json={"key": "s", "seed": 3})
        assert bad.status_code == 422 and "power" in bad.json()["detail"]
        nan = client.post(
            "/contexts",
            content=b'{"key": "n", "power": NaN}',
            headers={"content-type": "application/json"},
        )
        assert nan.status_code == 422 and "finite" in nan.json()["detail"]


def test_a_seed_in_use_is_409_and_two_keys_never_share_a_model(client: TestClient) -> None:
    register(client, "tenant-b:x", seed=777)
    before = snapshot(client)
    taken = client.post("/contexts", json={"key": "tenant-a:y", "seed": 777})
    assert taken.status_code == 409
    detail = taken.json()["detail"]
    assert "seed 777" in detail and "tenant-b" not in detail
    assert snapshot(client) == before
    batch = client.post("/contexts:batch", json={"contexts": [{"key": "c", "seed": 777}]})
    assert batch.status_code == 409
    assert client.get("/contexts/c").status_code == 404


def test_a_deleted_contexts_seed_cannot_bring_its_weights_back(client: TestClient) -> None:
    register(client, "old", seed=31)
    assert client.delete("/contexts/old").status_code == 204
    for key in ("old", "thief"):
        again = client.post("/contexts", json={"key": key, "seed": 31})
        assert again.status_code == 409 and "live or deleted" in again.json()["detail"]
    fresh = register(client, "old")
    assert fresh["seed"] != 31


def test_model_counts_live_contexts_and_explains_their_cost(client: TestClient) -> None:
    for key in ("a", "b", "c"):
        register(client, key)
    assert client.delete("/contexts/b").status_code == 204
    model = client.get("/model").json()
    assert model["contexts"] == client.get("/contexts").json()["total"] == 2
    assert model["bank_rows"] == 3  # the deleted context keeps its row in memory
    assert model["stored_bytes_per_context"] == 8
    # Complex keys: (cos, -sin) in float32 per input unit of each layer, 64 and 32 here.
    assert model["bytes_per_context"] == 8 * (64 + 32)


def test_registration_past_the_shard_capacity_is_409_and_changes_nothing(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(shards={"count": 1, "capacity": 2})
    with TestClient(create_app(settings)) as client:
        assert [register(client, key)["shard"] for key in ("a", "b")] == [0, 0]
        before = snapshot(client)
        one = client.post("/contexts", json={"key": "c"})
        batch = client.post("/contexts:batch", json={"contexts": [{"key": "c"}, {"key": "d"}]})
        assert one.status_code == batch.status_code == 409
        assert one.json()["detail"].startswith(
            "the 1 shard is full at 2 live contexts each, with no room for a new context; "
            "raise PSP_SHARDS__COUNT to add shards (or PSP_SHARDS__CAPACITY"
        )
        assert "no room for 2 new contexts" in batch.json()["detail"]
        assert snapshot(client) == before
        assert client.delete("/contexts/a").status_code == 204
        assert register(client, "c")["shard"] == 0
