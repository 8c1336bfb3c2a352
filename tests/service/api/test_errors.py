"""Error answers: 405 with a correct Allow header, hints chosen by what failed, Retry-After
from the settings, and what a failed rollback says."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis
from fastapi.testclient import TestClient

from service.app import create_app
from service.checkpoints.rollback import RollbackNotDone
from service.checkpoints.rollback_sender import RedisRollback
from service.feedback.service import FeedbackUnavailable
from service.model.host import ModelUnhealthy
from service.queue.base import QueueFull, QueueUnavailable
from service.queue.keys import ShardKeys
from service.registry.store import RegistryUnavailable
from tests.service.api.helpers import register, rows, sqlite_settings


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/predict/x", "POST"),
        ("PUT", "/contexts", "GET, POST"),
        ("POST", "/contexts/a", "GET, DELETE"),
        ("GET", "/model/rollback", "POST"),
        ("DELETE", "/model", "GET"),
    ],
)
def test_405_names_the_allowed_methods(client: TestClient, method, path, allowed) -> None:
    response = client.request(method, path)
    assert response.status_code == 405
    assert response.headers["Allow"] == allowed
    assert response.json()["detail"] == f"{method} is not allowed on {path}; use {allowed}"


def test_a_bad_query_parameter_gets_a_query_hint(client: TestClient) -> None:
    detail = client.get("/contexts", params={"limit": 5000}).json()["detail"]
    assert detail.startswith("query parameter limit:")
    assert "?limit=" in detail and '"key"' not in detail


def test_a_bad_header_gets_a_header_hint(client: TestClient) -> None:
    register(client, "t")
    response = client.post(
        "/train/t",
        json={"inputs": rows(1), "labels": [0]},
        headers={"Idempotency-Key": "no spaces"},
    )
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail.startswith("header parameter idempotency-key:")
    assert "Idempotency-Key header of 1 to 128 characters" in detail and "inputs" not in detail


def test_a_bad_body_still_gets_the_body_example(client: TestClient) -> None:
    detail = client.post("/train/t", json={"inputs": rows(1)}).json()["detail"]
    assert detail.startswith("labels: Field required")
    assert '"labels": [3, ...]' in detail


@pytest.mark.parametrize(
    ("failure", "status", "retry_after", "detail"),
    [
        (
            QueueFull(4, 10, 5),
            429,
            "4",
            "the train queue holds 10 pending examples (limit 5); retry after 4 s, or send "
            "smaller batches less often",
        ),
        (
            QueueUnavailable("Connection refused"),
            503,
            "7",
            "the train queue is unreachable (Connection refused); nothing was queued, retry later",
        ),
        (
            RegistryUnavailable("could not connect"),
            503,
            "7",
            "the context registry is unreachable; nothing was changed, retry later",
        ),
        (
            ModelUnhealthy("the model's weights are not finite; retry later"),
            503,
            "7",
            "the model's weights are not finite; retry later",
        ),
        (
            FeedbackUnavailable("Connection refused"),
            503,
            "7",
            "the feedback store is unreachable (Connection refused); nothing was changed, "
            "retry later",
        ),
        (
            RollbackNotDone("the worker cannot be reached through Redis (Connection refused)"),
            503,
            "7",
            "the rollback did not happen: the worker cannot be reached through Redis "
            "(Connection refused); the model is unchanged, retry later",
        ),
    ],
)
def test_retry_after_follows_the_settings(
    tmp_path: Path, failure: Exception, status: int, retry_after: str, detail: str
) -> None:
    settings = sqlite_settings(
        tmp_path, queue={"retry_after_seconds": 4}, unavailable_retry_after_seconds=7
    )
    app = create_app(settings)

    @app.get("/failing")
    def failing() -> None:
        raise failure

    # No lifespan: the answer comes from the error handlers alone.
    response = TestClient(app).get("/failing")
    assert response.status_code == status
    assert response.headers["Retry-After"] == retry_after
    assert response.json() == {"detail": detail}


def test_a_rollback_that_cannot_reach_the_worker_says_it_did_not_happen(
    app_client: TestClient,
) -> None:
    runtime = app_client.app.state.runtime  # type: ignore[attr-defined]
    unreachable = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    runtime.shards[0].rollback = RedisRollback(unreachable, ShardKeys())
    response = app_client.post("/model/rollback", json={"version": 0})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    detail = response.json()["detail"]
    assert detail.startswith(
        "the rollback did not happen: the worker cannot be reached through Redis ("
    )
    assert detail.endswith("); the model is unchanged, retry later")
