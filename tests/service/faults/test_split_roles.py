"""api + worker: wait=true through Redis, hot-swapped weights, rollback relayed to the worker."""

from __future__ import annotations

import httpx

from service.testing.processes import wait_until

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
