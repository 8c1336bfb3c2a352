"""GET /model, /healthz, /readyz and /metrics."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.service.api.helpers import register, rows


def test_model_describes_config_version_contexts_parameters(client: TestClient) -> None:
    register(client, "a")
    client.post("/train/a?wait=true", json={"inputs": rows(2), "labels": [1, 2]})
    body = client.get("/model").json()
    assert body["config"]["kind"] == "complex" and body["config"]["hidden"] == [32]
    assert body["model_version"] == 1 and body["contexts"] == 1
    # complex 64 -> 32 -> 10: real and imaginary weights, real biases
    assert body["parameters"] == 2 * (64 * 32 + 32 * 10) + 32 + 10
    assert body["bytes_per_context"] == 8 * (64 + 32)
    assert body["device"] == "cpu" and body["role"] == "all"


def test_healthz_and_readyz(client: TestClient, monkeypatch) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["registry"] is True
    runtime = client.app.state.runtime  # type: ignore[attr-defined]

    async def down() -> bool:
        return False

    monkeypatch.setattr(runtime.registry, "ping", down)
    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503
    assert "registry" in not_ready.json()["detail"]


def test_a_replica_without_its_shards_weights_is_not_ready_and_predicts_nothing(
    client: TestClient, monkeypatch
) -> None:
    register(client, "a")
    host = client.app.state.runtime.shards[0].host  # type: ignore[attr-defined]
    monkeypatch.setattr(host, "weights_missing", "its newest checkpoint could not be read")

    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json()["checks"]["weights_loaded"] is False
    assert (
        "shard 0 has not loaded its weights yet: its newest checkpoint could not be read"
        in (not_ready.json()["detail"])
    )
    refused = client.post("/predict/a", json={"inputs": rows(1)})
    assert refused.status_code == 503 and "Retry-After" in refused.headers
    assert "has not loaded its shard's weights yet" in refused.json()["detail"]

    monkeypatch.setattr(host, "weights_missing", None)
    assert client.get("/readyz").json()["checks"]["weights_loaded"] is True
    assert client.post("/predict/a", json={"inputs": rows(1)}).status_code == 200


def test_metrics_are_prometheus_text_without_context_keys(client: TestClient) -> None:
    register(client, "secret-tenant-key")
    client.post("/train/secret-tenant-key?wait=true", json={"inputs": rows(4), "labels": [1] * 4})
    client.post("/predict/secret-tenant-key", json={"inputs": rows(3)})
    text = client.get("/metrics").text
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith("psp_") and " " in line
    }
    assert values['psp_model_version{shard="0"}'] == 1
    assert values['psp_predict_batch_rows_bucket{le="4.0"}'] >= 1
    assert values['psp_trainer_examples_total{shard="0"}'] >= 4
    assert values['psp_trainer_steps_total{shard="0"}'] >= 1
    assert 0 <= values["psp_prequential_accuracy_ratio"] <= 1
    assert any(name.startswith("psp_http_request_duration_seconds") for name in values)
    assert 'handler="/predict/{key}"' in text
    assert "secret-tenant-key" not in text
