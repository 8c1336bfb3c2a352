"""Store outages: Redis stopped and restarted, PostgreSQL cut off and restored."""

from __future__ import annotations

import re

import httpx
import pytest
from sqlalchemy.engine import make_url

from service.testing.processes import wait_until
from tests.service.faults.proxy import TcpProxy

# Every test here starts real `psp` processes; `make test-fast` leaves them out.
pytestmark = pytest.mark.real_process

ROW = [0.25] * 64


def _train(base: str, key: str = "t", wait: bool = False) -> httpx.Response:
    suffix = "?wait=true" if wait else ""
    return httpx.post(
        f"{base}/train/{key}{suffix}", json={"inputs": [ROW], "labels": [1]}, timeout=15
    )


def _predict(base: str, key: str = "t") -> httpx.Response:
    return httpx.post(f"{base}/predict/{key}", json={"inputs": [ROW]}, timeout=15)


def _failed_registry_polls(base: str) -> float:
    """How many polls for deleted contexts found the registry unreachable."""
    sample = 'psp_background_poll_failures_total{task="registry-poller"}'
    metrics = httpx.get(f"{base}/metrics", timeout=10).text
    found = re.search(rf"^{re.escape(sample)} (\S+)$", metrics, re.MULTILINE)
    return float(found[1]) if found else 0.0


def test_redis_outage_answers_503_on_train_while_predict_works(
    base_env, spawn, throwaway_redis
) -> None:
    server = spawn("serve", {**base_env, "PSP_REDIS_URL": throwaway_redis.url})
    base = f"http://127.0.0.1:{server.port}"
    assert httpx.post(f"{base}/contexts", json={"key": "t"}, timeout=10).status_code == 201
    assert _train(base, wait=True).status_code == 200

    throwaway_redis.kill()
    down = _train(base)
    assert down.status_code == 503
    assert "train queue is unreachable" in down.json()["detail"]
    assert _predict(base).status_code == 200
    assert httpx.get(f"{base}/readyz", timeout=10).status_code == 503

    throwaway_redis.start()  # same port, empty (no persistence): the stream and group come back
    wait_until(lambda: _train(base).status_code == 202, 30, 0.5, what="train after Redis returned")
    assert _train(base, wait=True).status_code == 200
    assert _predict(base).status_code == 200
    assert httpx.get(f"{base}/readyz", timeout=10).status_code == 200


def test_postgres_outage_keeps_predict_and_answers_503_on_registration(base_env, spawn) -> None:
    url = make_url(base_env["PSP_DATABASE_URL"])
    proxy = TcpProxy(url.port or 5432)
    proxy.open()
    env = {**base_env, "PSP_DATABASE_URL": url.set(port=proxy.port).render_as_string(False)}
    server = spawn("serve", env)
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert httpx.post(f"{base}/contexts", json={"key": "t"}, timeout=10).status_code == 201
        assert _train(base, wait=True).status_code == 200

        proxy.cut()
        register = httpx.post(f"{base}/contexts", json={"key": "new"}, timeout=30)
        assert register.status_code == 503
        assert "registry is unreachable" in register.json()["detail"]
        failed_before = _failed_registry_polls(base)
        for more in (1, 2, 3):  # across several failed polls for deletions, predict still answers
            assert _predict(base).status_code == 200
            wait_until(
                lambda more=more: _failed_registry_polls(base) >= failed_before + more,
                30,
                what=f"failed poll number {more} for deleted contexts",
            )
        assert _predict(base).json()["predictions"] and _train(base).status_code == 202
        assert httpx.get(f"{base}/readyz", timeout=30).status_code == 503

        proxy.open()
        wait_until(
            lambda: (
                httpx.post(f"{base}/contexts", json={"key": "new"}, timeout=10).status_code == 201
            ),
            30,
            0.5,
            what="registration after PostgreSQL returned",
        )
        assert _predict(base, "new").status_code == 200
        assert httpx.get(f"{base}/readyz", timeout=10).status_code == 200
    finally:
        proxy.cut()
