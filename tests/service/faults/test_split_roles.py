"""api + worker: wait=true through Redis, hot-swapped weights, rollback relayed to the worker."""

from __future__ import annotations

import httpx
import pytest

from service.testing.processes import wait_until

# Every test here starts real `psp` processes; `make test-fast` leaves them out.
pytestmark = pytest.mark.real_process

ROW = [0.3] * 64


def _metric(base: str, name: str) -> float:
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split(" ")[1])
    return 0.0


def test_api_follows_the_worker_and_relays_rollbacks(base_env, spawn) -> None:
    env = {
        **base_env,
        "PSP_CHECKPOINT__EVERY_STEPS": "1",
        "PSP_CHECKPOINT__EVERY_SECONDS": "0.2",
        "PSP_CHECKPOINT__KEEP": "20",
    }
    api = spawn("serve", {**env, "PSP_ROLE": "api"})
    spawn("worker", {**env, "PSP_ROLE": "worker"})
    base = f"http://127.0.0.1:{api.port}"
    assert httpx.post(f"{base}/contexts", json={"key": "t"}, timeout=10).status_code == 201

    served = {}
    for label in range(1, 5):
        applied = httpx.post(
            f"{base}/train/t?wait=true",
            json={"inputs": [ROW] * 4, "labels": [label] * 4},
            timeout=30,
        )
        assert applied.status_code == 200
        version = applied.json()["model_version"]
        assert version == label
        # The API serves what the worker checkpointed, shortly after it was written.
        wait_until(
            lambda v=version: httpx.get(f"{base}/model", timeout=5).json()["model_version"] == v,
            20,
            0.05,
            what=f"API serving version {version}",
        )
        served[version] = httpx.post(f"{base}/predict/t", json={"inputs": [ROW]}, timeout=10).json()
    assert _metric(base, "psp_checkpoint_staleness_seconds_count") >= 4
    assert (
        0
        < _metric(base, "psp_checkpoint_staleness_seconds_sum")
        / _metric(base, "psp_checkpoint_staleness_seconds_count")
        < 2
    )

    rolled = httpx.post(f"{base}/model/rollback", json={"version": 2}, timeout=60)
    assert rolled.status_code == 200, rolled.text
    # Version 2's weights come back as version 5: a version names one set of weights.
    assert (rolled.json()["model_version"], rolled.json()["restored_from"]) == (5, 2)
    again = httpx.post(f"{base}/predict/t", json={"inputs": [ROW]}, timeout=10).json()
    assert again == {**served[2], "model_version": 5}
    missing = httpx.post(f"{base}/model/rollback", json={"version": 99}, timeout=60)
    assert missing.status_code == 404 and "kept versions" in missing.json()["detail"]
    after = httpx.post(
        f"{base}/train/t?wait=true", json={"inputs": [ROW], "labels": [0]}, timeout=30
    )
    assert after.json()["model_version"] == 6


def _shard_model(base: str, shard: int) -> dict:
    return httpx.get(f"{base}/model", params={"shard": shard}, timeout=5).json()


def _train(base: str, key: str, label: int) -> int:
    applied = httpx.post(
        f"{base}/train/{key}?wait=true",
        json={"inputs": [ROW] * 4, "labels": [label] * 4},
        timeout=30,
    )
    assert applied.status_code == 200, applied.text
    version: int = applied.json()["model_version"]
    return version


def test_the_api_follows_one_worker_per_shard(base_env, spawn) -> None:
    env = {
        **base_env,
        "PSP_SHARDS__COUNT": "2",
        "PSP_CHECKPOINT__EVERY_STEPS": "1",
        "PSP_CHECKPOINT__EVERY_SECONDS": "0.2",
        "PSP_CHECKPOINT__KEEP": "20",
    }
    api = spawn("serve", {**env, "PSP_ROLE": "api"})
    workers = [spawn("worker", env, "--shard", str(shard)) for shard in (0, 1)]
    base = f"http://127.0.0.1:{api.port}"
    for key, shard in (("a", 0), ("b", 1)):
        registered = httpx.post(f"{base}/contexts", json={"key": key}, timeout=10)
        assert registered.status_code == 201 and registered.json()["shard"] == shard

    assert [_train(base, "b", label) for label in (1, 2)] == [1, 2]
    wait_until(lambda: _shard_model(base, 1)["model_version"] == 2, 20, 0.05, what="shard 1")
    assert _shard_model(base, 0)["model_version"] == 0
    assert _train(base, "a", 3) == 1
    wait_until(lambda: _shard_model(base, 0)["model_version"] == 1, 20, 0.05, what="shard 0")

    items = [{"context": "a", "inputs": [ROW]}, {"context": "b", "inputs": [ROW]}]
    many = httpx.post(f"{base}/predict", json={"items": items}, timeout=10).json()
    assert [item["model_version"] for item in many["items"]] == [1, 2]
    single = httpx.post(f"{base}/predict/b", json={"inputs": [ROW]}, timeout=10).json()
    assert single["predictions"] == many["items"][1]["predictions"]

    rolled = httpx.post(f"{base}/model/rollback", json={"version": 1, "shard": 1}, timeout=60)
    assert rolled.status_code == 200, rolled.text
    assert (rolled.json()["shard"], rolled.json()["model_version"]) == (1, 3)
    assert _shard_model(base, 0)["model_version"] == 1
    for shard, worker in enumerate(workers):
        worker_base = f"http://127.0.0.1:{worker.port}"
        assert _metric(worker_base, f'psp_model_version{{shard="{shard}"}}') == [1, 3][shard]

    # A worker of shard 1 starts again from its own checkpoints.
    workers[1].kill()
    workers[1].start()
    assert _train(base, "b", 4) == 4


def test_a_replica_that_cannot_load_its_shards_weights_is_not_ready_until_it_can(
    base_env, spawn, tmp_path
) -> None:
    env = {**base_env, "PSP_CHECKPOINT__EVERY_STEPS": "1", "PSP_CHECKPOINT__EVERY_SECONDS": "0.2"}
    api = spawn("serve", {**env, "PSP_ROLE": "api"})
    worker = spawn("worker", {**env, "PSP_ROLE": "worker"})
    base = f"http://127.0.0.1:{api.port}"
    assert httpx.post(f"{base}/contexts", json={"key": "t"}, timeout=10).status_code == 201
    assert _train(base, "t", 3) == 1
    wait_until(lambda: _shard_model(base, 0)["model_version"] == 1, 20, what="version 1 served")
    worker.stop()

    # A replica on a volume of its own, started while the worker that could send it the
    # announced checkpoint is down: it holds only untrained weights.
    replica = spawn(
        "serve", {**env, "PSP_ROLE": "api", "PSP_DATA_DIR": str(tmp_path / "replica-data")}
    )
    copy = f"http://127.0.0.1:{replica.port}"
    ready = httpx.get(f"{copy}/readyz", timeout=10)
    assert ready.status_code == 503 and ready.json()["checks"]["weights_loaded"] is False
    assert "shard 0 has not loaded its weights yet" in ready.json()["detail"]
    refused = httpx.post(f"{copy}/predict/t", json={"inputs": [ROW]}, timeout=10)
    assert refused.status_code == 503, refused.text
    assert "has not loaded its shard's weights yet" in refused.json()["detail"]

    # The worker comes back (on another port) and announces its next checkpoint.
    spawn("worker", {**env, "PSP_ROLE": "worker"})
    assert _train(base, "t", 3) == 2
    wait_until(
        lambda: httpx.get(f"{copy}/readyz", timeout=10).status_code == 200,
        30,
        what="the replica ready once it loaded the weights",
    )
    answer = httpx.post(f"{copy}/predict/t", json={"inputs": [ROW]}, timeout=10)
    assert answer.status_code == 200 and answer.json()["model_version"] == 2
