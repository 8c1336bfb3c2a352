"""A stand-in for the service that answers the HTTP contract from an in-process learner.

It lets the HTTP runner be tested without the server: `httpx.MockTransport` routes the client's
requests to `FakeService.handle`.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
import torch

from psp_core import ContextSpec, ModelConfig, OnlineLearner, TrainingConfig, build_model


class FakeService:
    """`POST /contexts`, `POST /train/{key}?wait=true`, `POST /predict/{key}`, `GET /model`."""

    def __init__(self, config: ModelConfig, training: TrainingConfig) -> None:
        self.config = config
        self.learner = OnlineLearner(build_model(config), training)
        self.rows: dict[str, int] = {}
        self.busy_answers = 0  # answer this many requests with 429 first
        self.refuse_steps = False  # answer training as a refused (non-finite) step
        self.log: list[str] = []
        self.authorizations: set[str | None] = set()

    def _rows(self, key: str, batch: int) -> torch.Tensor:
        return torch.full((batch,), self.rows[key], dtype=torch.long)

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.log.append(f"{request.method} {path}")
        self.authorizations.add(request.headers.get("Authorization"))
        if self.busy_answers:
            self.busy_answers -= 1
            return httpx.Response(429, headers={"Retry-After": "0"}, json={"detail": "busy"})
        if request.method == "GET" and path == "/model":
            info = {"config": self.config.to_dict(), "model_version": self.learner.model_version}
            return httpx.Response(200, json=info)
        body = json.loads(request.content)
        if path == "/contexts":
            spec = ContextSpec(seed=body["seed"], power=body["power"])
            status = 200 if body["key"] in self.rows else 201
            if status == 201:
                self.rows[body["key"]] = self.learner.model.bank.add(spec)
            return httpx.Response(status, json={"key": body["key"], "kind": self.config.kind})
        key = path.rsplit("/", 1)[1]
        if key not in self.rows:
            return httpx.Response(404, json={"detail": f"no context {key}; POST /contexts first"})
        x = torch.tensor(body["inputs"], dtype=torch.float32)
        if path.startswith("/train/"):
            assert request.url.params.get("wait") == "true"
            labels = torch.tensor(body["labels"], dtype=torch.long)
            applied = not self.refuse_steps
            if applied:
                self.learner.step(x, self._rows(key, len(x)), labels)
            return httpx.Response(
                200,
                json={
                    "batch_id": "b",
                    "accepted": len(x),
                    "applied": applied,
                    "model_version": self.learner.model_version,
                },
            )
        probabilities = self.learner.predict(x, self._rows(key, len(x)))
        return httpx.Response(
            200,
            json={
                "predictions": probabilities.argmax(1).tolist(),
                "probabilities": probabilities.tolist(),
                "model_version": self.learner.model_version,
            },
        )

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)


@pytest.fixture
def fake_service() -> Callable[[ModelConfig, TrainingConfig], FakeService]:
    return FakeService
