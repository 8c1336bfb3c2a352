"""Drift detection through the service: a context whose labels change is flagged in
GET /contexts/{key}, its history and psp_context_drifts_total; the others are not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from service.app import create_app
from service.testing.processes import wait_until
from tests.service.api.helpers import register, sqlite_settings
from tests.service.api.test_live_accuracy import counter, varied_rows

BLOCK = 50


def _train(client: TestClient, key: str, label: int, blocks: int) -> None:
    for _ in range(blocks):
        response = client.post(
            f"/train/{key}?wait=true",
            json={"inputs": varied_rows(BLOCK), "labels": [label] * BLOCK},
        )
        assert response.status_code == 200, response.text


def _context(client: TestClient, key: str) -> dict[str, Any]:
    body: dict[str, Any] = client.get(f"/contexts/{key}").json()
    return body


def test_a_context_whose_labels_change_is_flagged(tmp_path: Path) -> None:
    settings = sqlite_settings(
        tmp_path,
        checkpoint={"every_steps": 1000, "every_seconds": 0.1},
        training={"lr": 0.01},  # so that the small model learns its constant label at once
        drift={"warmup_rows": 100},
    )
    with TestClient(create_app(settings)) as client:
        register(client, "drifting")
        register(client, "steady")
        fresh = _context(client, "drifting")["drift"]
        assert fresh == {"state": "learning", "drifts": 0, "last_drift_at": None, "events": []}
        assert all(item["drift"] is None for item in client.get("/contexts").json()["items"])
        drifts_before = counter(client, 'psp_context_drifts_total{shard="0"}')

        _train(client, "drifting", 3, 8)
        _train(client, "steady", 5, 8)
        wait_until(lambda: _context(client, "drifting")["examples_seen"] == 8 * BLOCK, 30)
        assert _context(client, "drifting")["drift"]["state"] == "stable"
        _train(client, "drifting", 7, 3)  # the tenant's meaning of the rows changes
        _train(client, "steady", 5, 3)
        wait_until(lambda: _context(client, "drifting")["drift"]["state"] == "drifted", 30)

        drift = _context(client, "drifting")["drift"]
        assert drift["drifts"] == 1
        (event,) = drift["events"]
        assert event["source"] == "train"
        # The baseline holds the first rows after the warm-up too, which the model was still
        # learning; how many depends on how the checkpoints (every 0.1 s) group the blocks.
        assert event["accuracy_before"] > 0.8 and event["accuracy_after"] < 0.5
        assert event["at"] == drift["last_drift_at"]
        history = client.get("/contexts/drifting/history", params={"hours": 1}).json()
        assert history["drifts"] == [event]
        wait_until(lambda: _context(client, "steady")["examples_seen"] == 11 * BLOCK, 30)
        steady = _context(client, "steady")["drift"]
        assert (steady["state"], steady["drifts"]) == ("stable", 0)
        assert client.get("/contexts/steady/history").json()["drifts"] == []
        assert counter(client, 'psp_context_drifts_total{shard="0"}') == drifts_before + 1
