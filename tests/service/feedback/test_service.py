"""Delayed labels over HTTP: one tenant's predictions never push out another's."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.api.helpers import register, rows, sqlite_settings


def _remember(client: TestClient, key: str, count: int) -> list[str]:
    answer = client.post(f"/predict/{key}?remember=true", json={"inputs": rows(count)})
    assert answer.status_code == 200, answer.text
    ids: list[str] = answer.json()["prediction_ids"]
    return ids


def test_a_loud_tenant_pushes_out_only_its_own_remembered_predictions(tmp_path: Path) -> None:
    settings = sqlite_settings(tmp_path, feedback={"max_rows": 100})  # 10 per context
    with TestClient(create_app(settings)) as client:
        register(client, "a")
        register(client, "b")
        quiet = _remember(client, "b", 5)
        loud = [i for _ in range(4) for i in _remember(client, "a", 25)]
        kept = client.post("/feedback/b", json={"prediction_ids": quiet, "labels": [1] * 5})
        assert kept.status_code == 202, kept.text
        pushed = client.post("/feedback/a", json={"prediction_ids": loud[:1], "labels": [1]})
        assert pushed.status_code == 410
        newest = client.post("/feedback/a", json={"prediction_ids": loud[-10:], "labels": [1] * 10})
        assert newest.status_code == 202
