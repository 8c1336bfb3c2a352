"""The producer side of training over HTTP: shares of the queue and idempotency keys."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.api.helpers import register, rows, snapshot, sqlite_settings


def test_a_tenant_over_its_share_of_the_queue_gets_429_and_the_others_do_not(
    tmp_path: Path,
) -> None:
    # Checkpoints are far apart, so accepted examples stay pending in the queue.
    settings = sqlite_settings(tmp_path, queue={"max_pending_examples": 100, "context_share": 0.3})
    with TestClient(create_app(settings)) as client:
        for key in ("loud", "quiet"):
            register(client, key)
        body = {"inputs": rows(10), "labels": [1] * 10}
        statuses = [client.post("/train/loud", json=body).status_code for _ in range(3)]
        assert statuses == [202, 202, 202]  # 30 examples: its whole share
        before = snapshot(client)
        refused = client.post("/train/loud", json=body)
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "1"
        assert "this context has 30 examples pending" in refused.json()["detail"]
        assert snapshot(client)[2:] == before[2:]  # nothing queued, no context changed
        assert client.post("/train/quiet", json=body).status_code == 202


def test_an_idempotency_key_names_one_batch_whichever_shard_it_went_to(tmp_path: Path) -> None:
    settings = sqlite_settings(tmp_path, shards={"count": 2})
    with TestClient(create_app(settings)) as client:
        shards = {register(client, key)["shard"]: key for key in ("a", "b")}
        assert sorted(shards) == [0, 1]
        headers = {"Idempotency-Key": "batch-1"}
        body = {"inputs": rows(2), "labels": [1, 2]}
        first = client.post(f"/train/{shards[0]}", json=body, headers=headers)
        assert first.status_code == 202
        again = client.post(f"/train/{shards[1]}", json=body, headers=headers)
        assert again.status_code == 422, again.text
        assert "Idempotency-Key was first used with a different batch" in again.json()["detail"]
