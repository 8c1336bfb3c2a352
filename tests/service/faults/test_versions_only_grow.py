"""Role `all` serves the versions it trains, ahead of its checkpoints: after a kill -9 its
successor still serves only versions above every one served before."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.real_process


def _version(base: str) -> int:
    return int(httpx.get(f"{base}/model", timeout=10).json()["model_version"])


def test_a_restarted_all_role_serves_no_version_a_second_time(base_env, spawn) -> None:
    # No checkpoint after the first one: everything trained lives past it.
    env = {
        **base_env,
        "PSP_ROLE": "all",
        "PSP_CHECKPOINT__EVERY_STEPS": "100000",
        "PSP_CHECKPOINT__EVERY_SECONDS": "3600",
    }
    server = spawn("serve", env)
    base = f"http://127.0.0.1:{server.port}"
    assert httpx.post(f"{base}/contexts", json={"key": "tenant"}, timeout=10).status_code == 201
    rng = np.random.default_rng(0)
    for _ in range(5):
        body = {"inputs": rng.random((32, 64)).tolist(), "labels": [3] * 32}
        response = httpx.post(f"{base}/train/tenant?wait=true", json=body, timeout=60)
        assert response.status_code == 200 and response.json()["applied"], response.text
    served = _version(base)
    assert served >= 5

    server.kill()
    server.start()
    # The successor replays the five batches from the queue, as the crashed process did.
    restarted = _version(base)
    assert restarted > served
    body = {"inputs": rng.random((32, 64)).tolist(), "labels": [3] * 32}
    response = httpx.post(f"{base}/train/tenant?wait=true", json=body, timeout=60)
    assert response.status_code == 200 and response.json()["applied"], response.text
    assert _version(base) > restarted
