"""Live per-context accuracy: GET /contexts/{key} (rolling window) and /history (hourly)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from fastapi.testclient import TestClient

from service.app import create_app
from service.testing.processes import wait_until
from tests.service.api.helpers import register, sqlite_settings


def varied_rows(n: int) -> list[list[float]]:
    return [[((i * 7 + j) % 11) / 10 for j in range(64)] for i in range(n)]


def counter(client: TestClient, name: str) -> float:
    """A counter's value in /metrics (this process's counters are shared by its tests)."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not in /metrics")


def test_train_and_feedback_scores_show_per_context(tmp_path: Path) -> None:
    settings = sqlite_settings(tmp_path, checkpoint={"every_steps": 50, "every_seconds": 0.2})
    with TestClient(create_app(settings)) as client:
        register(client, "accuracy-tenant-7")
        register(client, "other")
        scored_before = counter(client, "psp_feedback_scored_total")
        correct_before = counter(client, "psp_feedback_correct_total")
        fresh = client.get("/contexts/accuracy-tenant-7").json()["recent"]
        assert fresh == {
            "window_hours": 24,
            "train_seen": 0,
            "train_accuracy": None,
            "feedback_seen": 0,
            "feedback_accuracy": None,
        }
        trained = client.post(
            "/train/accuracy-tenant-7?wait=true",
            json={"inputs": varied_rows(6), "labels": [1, 2, 3, 1, 2, 3]},
        )
        assert trained.status_code == 200, trained.text
        remembered = client.post(
            "/predict/accuracy-tenant-7?remember=true", json={"inputs": varied_rows(4)}
        ).json()
        predicted = remembered["predictions"]
        labels = [predicted[0], predicted[1], predicted[2], (predicted[3] + 1) % 10]
        scored = client.post(
            "/feedback/accuracy-tenant-7?wait=true",
            json={"prediction_ids": remembered["prediction_ids"], "labels": labels},
        )
        assert scored.status_code == 200 and scored.json()["correct"] == 3

        def recent() -> dict[str, object]:
            body: dict[str, object] = client.get("/contexts/accuracy-tenant-7").json()["recent"]
            return body

        # Train scores arrive with the checkpoint's counts: the 6 trained rows and the 4
        # labelled ones were both scored before being learned.
        wait_until(lambda: recent()["train_seen"] == 10, 10, what="train scores")
        window = recent()
        assert window["feedback_seen"] == 4 and window["feedback_accuracy"] == 0.75
        context = client.get("/contexts/accuracy-tenant-7").json()
        assert window["train_accuracy"] == context["prequential_accuracy"]
        assert client.get("/contexts/other").json()["recent"]["train_seen"] == 0
        # Lists stay one query: no rolling window there.
        listed = client.get("/contexts").json()["items"]
        assert all(item["recent"] is None for item in listed)

        history = client.get("/contexts/accuracy-tenant-7/history?hours=2").json()
        assert history["key"] == "accuracy-tenant-7" and history["hours"] == 2
        (bucket,) = history["buckets"]
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        assert datetime.fromisoformat(bucket["hour"]) == hour
        assert (bucket["train_seen"], bucket["feedback_seen"], bucket["feedback_correct"]) == (
            10,
            4,
            3,
        )
        assert bucket["feedback_accuracy"] == 0.75

        assert counter(client, "psp_feedback_scored_total") - scored_before == 4
        assert counter(client, "psp_feedback_correct_total") - correct_before == 3
        assert "accuracy-tenant-7" not in client.get("/metrics").text


def test_history_of_an_unknown_context_is_404_and_bad_hours_422(app_client: TestClient) -> None:
    missing = app_client.get("/contexts/nobody/history")
    assert missing.status_code == 404 and "nobody" in missing.json()["detail"]
    register(app_client, "t")
    assert app_client.get("/contexts/t/history").json()["buckets"] == []
    for hours in ("0", "9000", "x"):
        bad = app_client.get(f"/contexts/t/history?hours={hours}")
        assert bad.status_code == 422 and "hours" in bad.json()["detail"]
