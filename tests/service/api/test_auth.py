"""API keys: 401 without a valid key, 403 for a wrong scope or a context outside the prefix."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.api.auth import Authenticator, issue_key
from service.app import create_app
from tests.service.api.helpers import rows, snapshot

PREDICT, PREDICT_SPEC = issue_key(["predict"], name="reader")
TRAIN, TRAIN_SPEC = issue_key(["train"])
ADMIN, ADMIN_SPEC = issue_key(["admin", "predict", "train"], name="operator")
TENANT, TENANT_SPEC = issue_key(["admin", "predict", "train"], key_prefix="tenant-a:")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def secured(make_settings) -> Iterator[TestClient]:
    settings = make_settings(
        api_keys=[s.model_dump() for s in (PREDICT_SPEC, TRAIN_SPEC, ADMIN_SPEC, TENANT_SPEC)],
        limits={"max_key_length": 24},
    )
    with TestClient(create_app(settings)) as client:
        for key in ("shared", "tenant-a:one", "tenant-b:one"):
            client.post("/contexts", json={"key": key}, headers=bearer(ADMIN))
        yield client


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/predict/shared", {"inputs": rows(1)}),
        ("post", "/train/shared", {"inputs": rows(1), "labels": [0]}),
        ("post", "/contexts", {"key": "new"}),
        ("get", "/contexts", None),
        ("get", "/contexts/shared", None),
        ("delete", "/contexts/shared", None),
        ("get", "/model", None),
        ("post", "/model/rollback", {"version": 0}),
    ],
)
def test_missing_or_wrong_key_is_401(secured: TestClient, method, path, body) -> None:
    before = snapshot_admin(secured)
    for headers in ({}, bearer("psp_0000000000000000_nope"), {"X-API-Key": "garbage"}):
        kwargs = {"json": body} if body is not None else {}
        response = getattr(secured, method)(path, headers=headers, **kwargs)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert "API key" in response.json()["detail"]
    assert snapshot_admin(secured) == before


def snapshot_admin(client: TestClient):
    client.headers["Authorization"] = f"Bearer {ADMIN}"
    try:
        return snapshot(client)
    finally:
        del client.headers["Authorization"]


def test_scopes(secured: TestClient) -> None:
    x = {"inputs": rows(2)}
    xy = {"inputs": rows(2), "labels": [1, 2]}
    assert secured.post("/predict/shared", json=x, headers=bearer(PREDICT)).status_code == 200
    assert (
        secured.post("/predict/shared", json=x, headers={"X-API-Key": PREDICT}).status_code == 200
    )
    before = snapshot_admin(secured)
    refused = [
        secured.post("/train/shared", json=xy, headers=bearer(PREDICT)),
        secured.post("/contexts", json={"key": "x"}, headers=bearer(PREDICT)),
        secured.delete("/contexts/shared", headers=bearer(TRAIN)),
        secured.post("/model/rollback", json={"version": 0}, headers=bearer(TRAIN)),
        secured.post("/predict/shared", json=x, headers=bearer(TRAIN)),
    ]
    assert [r.status_code for r in refused] == [403] * 5
    assert "'train' scope" in refused[0].json()["detail"]
    assert "'admin' scope" in refused[1].json()["detail"]
    assert snapshot_admin(secured) == before
    assert secured.post("/train/shared", json=xy, headers=bearer(TRAIN)).status_code == 202
    assert secured.get("/contexts/shared", headers=bearer(PREDICT)).status_code == 200
    assert secured.get("/model", headers=bearer(TRAIN)).status_code == 200
    assert secured.delete("/contexts/shared", headers=bearer(ADMIN)).status_code == 204
    rollback = secured.post("/model/rollback", json={"version": 99}, headers=bearer(ADMIN))
    assert rollback.status_code == 404  # authorised; there is simply no such version


def test_prefix_keeps_a_tenant_to_its_own_contexts(secured: TestClient) -> None:
    mine = bearer(TENANT)
    listed = secured.get("/contexts", headers=mine).json()
    assert [item["key"] for item in listed["items"]] == ["tenant-a:one"] and listed["total"] == 1
    assert secured.get("/contexts/tenant-a:one", headers=mine).status_code == 200
    assert (
        secured.post("/predict/tenant-a:one", json={"inputs": rows(1)}, headers=mine).status_code
        == 200
    )
    before = snapshot_admin(secured)
    foreign = [
        secured.get("/contexts/tenant-b:one", headers=mine),
        secured.post("/predict/tenant-b:one", json={"inputs": rows(1)}, headers=mine),
        secured.post("/train/tenant-b:one", json={"inputs": rows(1), "labels": [0]}, headers=mine),
        secured.delete("/contexts/tenant-b:one", headers=mine),
        secured.post("/contexts", json={"key": "tenant-b:two"}, headers=mine),
        secured.post(
            "/contexts:batch",
            json={"contexts": [{"key": "tenant-a:ok"}, {"key": "elsewhere"}]},
            headers=mine,
        ),
    ]
    assert [r.status_code for r in foreign] == [403] * 6
    assert "start with 'tenant-a:'" in foreign[0].json()["detail"]
    assert snapshot_admin(secured) == before
    assert secured.post("/contexts", json={"key": "tenant-a:two"}, headers=mine).status_code == 201


def test_key_length_limit_is_configurable(secured: TestClient) -> None:
    long_key = "k" * 25
    response = secured.post("/contexts", json={"key": long_key}, headers=bearer(ADMIN))
    assert response.status_code == 422
    assert "at most 24 characters" in response.json()["detail"]
    assert secured.get(f"/contexts/{long_key}", headers=bearer(ADMIN)).status_code == 422


def test_health_and_metrics_stay_open(secured: TestClient) -> None:
    assert secured.get("/healthz").status_code == 200
    assert secured.get("/readyz").status_code == 200
    metrics = secured.get("/metrics")
    assert metrics.status_code == 200 and "psp_model_version" in metrics.text


def test_without_keys_the_service_is_open(client: TestClient) -> None:
    assert client.post("/contexts", json={"key": "anyone"}).status_code == 201


def test_keys_are_stored_as_salted_hashes() -> None:
    key, spec = issue_key(["predict"])
    _, other_spec = issue_key(["predict"])
    secret = key.split("_", 2)[2]
    assert secret not in spec.model_dump_json() and spec.salt != other_spec.salt
    authenticator = Authenticator([spec])
    assert authenticator.authenticate(key).scopes == frozenset({"predict"})
    with pytest.raises(Exception, match="not valid"):
        authenticator.authenticate(key[:-1] + ("A" if key[-1] != "A" else "B"))


def test_a_prefixed_admin_key_cannot_roll_back_the_whole_model(secured: TestClient) -> None:
    xy = {"inputs": rows(2), "labels": [1, 2]}
    trained = secured.post("/train/tenant-a:one?wait=true", json=xy, headers=bearer(TENANT))
    assert trained.status_code == 200
    before = snapshot_admin(secured)
    refused = secured.post("/model/rollback", json={"version": 0}, headers=bearer(TENANT))
    assert refused.status_code == 403
    assert "without a key prefix" in refused.json()["detail"]
    assert snapshot_admin(secured) == before


def test_listing_filters_by_prefix_within_the_keys_own(secured: TestClient) -> None:
    def keys(params: dict[str, str], key: str) -> list[str]:
        response = secured.get("/contexts", params=params, headers=bearer(key))
        assert response.status_code == 200, response.text
        return [item["key"] for item in response.json()["items"]]

    secured.post("/contexts", json={"key": "tenant-a:two"}, headers=bearer(ADMIN))
    assert keys({"prefix": "tenant-"}, ADMIN) == ["tenant-a:one", "tenant-b:one", "tenant-a:two"]
    assert keys({"prefix": "tenant-b:"}, ADMIN) == ["tenant-b:one"]
    assert keys({"prefix": "tenant-a:t"}, TENANT) == ["tenant-a:two"]
    assert keys({"prefix": "tenant-"}, TENANT) == ["tenant-a:one", "tenant-a:two"]
    foreign = secured.get("/contexts", params={"prefix": "tenant-b:"}, headers=bearer(TENANT))
    assert foreign.status_code == 403
    assert "starts with 'tenant-a:'" in foreign.json()["detail"]


def test_the_required_switch_closes_the_api_before_any_key_exists(make_settings) -> None:
    settings = make_settings(auth={"required": True})
    with TestClient(create_app(settings)) as client:
        refused = client.post("/contexts", json={"key": "anyone"})
        assert refused.status_code == 401
        assert "requires an API key" in refused.json()["detail"]
        assert client.get("/contexts").status_code == 401
        assert client.get("/healthz").status_code == 200


def test_the_key_follower_is_supervised_and_named_by_readyz(make_settings) -> None:
    settings = make_settings(registry_poll_seconds=0.05)
    with TestClient(create_app(settings)) as client:
        runtime = client.app.state.runtime  # type: ignore[attr-defined]
        runtime.supervisor.settle = 30.0  # a restarted task stays "down" long enough to see
        crashes = 0

        async def broken() -> None:
            nonlocal crashes
            crashes += 1
            raise RuntimeError("a bug in the key reader")

        runtime.registry.stored_api_keys = broken
        deadline = time.monotonic() + 5
        while "key-follower" not in runtime.supervisor.down():
            assert time.monotonic() < deadline, "the key follower's crash was not noticed"
            time.sleep(0.02)
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert "key-follower" in ready.json()["detail"]
        assert ready.json()["tasks_down"] == ["key-follower"]
        deadline = time.monotonic() + 5
        while crashes < 2:  # restarted, and it crashed again
            assert time.monotonic() < deadline, "the key follower was not restarted"
            time.sleep(0.02)


ACME, ACME_SPEC = issue_key(["admin", "predict", "train"], key_prefix="acme-")
ACME_UNDERSCORE, ACME_UNDERSCORE_SPEC = issue_key(["predict"], key_prefix="ac_e")


def test_prefixes_are_exact_and_case_sensitive(make_settings) -> None:
    """SQLite's LIKE ignores case and `_` is one of its wildcards: neither may widen a prefix."""
    settings = make_settings(
        api_keys=[s.model_dump() for s in (ADMIN_SPEC, ACME_SPEC, ACME_UNDERSCORE_SPEC)]
    )
    with TestClient(create_app(settings)) as client:
        for key in ("acme-one", "ACME-victim", "Acme-two", "acmE-three", "acXe", "ac_e"):
            assert client.post("/contexts", json={"key": key}, headers=bearer(ADMIN)).is_success

        def listed(key: str, prefix: str = "") -> tuple[list[str], int]:
            response = client.get("/contexts", params={"prefix": prefix}, headers=bearer(key))
            assert response.status_code == 200, response.text
            return [item["key"] for item in response.json()["items"]], response.json()["total"]

        assert listed(ACME) == (["acme-one"], 1)
        assert listed(ACME, "acme-o") == (["acme-one"], 1)
        assert listed(ADMIN, "ACME-") == (["ACME-victim"], 1)
        assert listed(ADMIN, "acme") == (["acme-one"], 1)
        assert listed(ADMIN, "ac_") == (["ac_e"], 1)
        assert listed(ACME_UNDERSCORE) == (["ac_e"], 1)
        assert client.get("/contexts?prefix=ACME-", headers=bearer(ACME)).status_code == 403
        for path in ("/contexts/ACME-victim", "/contexts/ACME-victim/history"):
            assert client.get(path, headers=bearer(ACME)).status_code == 403
        assert client.get("/v2/models/ACME-victim", headers=bearer(ACME)).status_code == 403
        xs = {"inputs": rows(1)}
        assert client.post("/predict/ACME-victim", json=xs, headers=bearer(ACME)).status_code == 403


def test_a_prefixed_admin_key_cannot_read_the_dead_letters(secured: TestClient) -> None:
    refused = secured.get("/model/dead-letters", headers=bearer(TENANT))
    assert refused.status_code == 403
    assert "without a key prefix" in refused.json()["detail"]
    assert secured.get("/model/dead-letters", headers=bearer(ADMIN)).status_code == 200
