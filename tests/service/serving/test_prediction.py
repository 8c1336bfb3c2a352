"""Predictions for known keys never wait for the registry."""

from __future__ import annotations

import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi.testclient import TestClient

from service.api.requests_in_flight import REQUESTS_IN_FLIGHT
from service.app import create_app
from service.testing.processes import wait_until
from tests.service.api.helpers import register, rows, sqlite_settings


def test_predictions_keep_their_latency_while_the_sqlite_registry_is_locked(
    tmp_path: Path,
) -> None:
    settings = sqlite_settings(tmp_path)
    with TestClient(create_app(settings)) as client:
        register(client, "known")
        body = {"inputs": rows(16)}  # more rows than are answered on the event loop
        assert client.post("/predict/known", json=body).status_code == 200
        lock = sqlite3.connect(
            tmp_path / "registry.db", timeout=1, isolation_level=None, check_same_thread=False
        )
        lock.execute("BEGIN EXCLUSIVE")  # every registry write now waits for the lock
        released = threading.Timer(3.0, lock.rollback)
        released.start()
        try:
            with ThreadPoolExecutor(16) as pool:
                # Enough registrations to occupy every thread asyncio would lend by default.
                stuck = [
                    pool.submit(client.post, "/contexts", json={"key": f"new-{i}"})
                    for i in range(12)
                ]
                # Every registration is in flight; those past the lending threads queue behind.
                wait_until(lambda: REQUESTS_IN_FLIGHT.count >= 12, 10, what="12 registrations")
                latencies = []
                for _ in range(5):
                    started = time.perf_counter()
                    answer = client.post("/predict/known", json=body)
                    latencies.append(time.perf_counter() - started)
                    assert answer.status_code == 200
                assert max(latencies) < 0.5, latencies
                assert not any(f.done() for f in stuck)  # the lock was held throughout
                assert {f.result().status_code for f in stuck} == {201}
        finally:
            released.cancel()
            lock.close()
