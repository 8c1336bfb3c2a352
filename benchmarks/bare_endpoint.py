"""A bare FastAPI + torch predict endpoint: the baseline the predict benchmarks measure the
service by (`predict_throughput.py`, `predict_latency.py`).

It is what one would write without the service: `POST /predict/{key}` parses the JSON body with
a pydantic model, looks the key up in a dict of bank rows, runs one forward pass of the same
psp_core model for that request alone (under a lock, since requests run in a thread pool) and
returns the probabilities. No batching, no registry, no metrics.

Run with uvicorn's factory mode; the model is configured from environment variables:

    BARE_KIND=complex BARE_INPUT=64 BARE_HIDDEN=256,256 BARE_CONTEXTS=1000 \
    python -m uvicorn bare_endpoint:create_app --factory --app-dir benchmarks --port 8100

`BARE_MODE=inline` makes the route `async` and runs the forward pass on the event loop itself
(no thread pool, no lock), the other plain way to write it.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import torch
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from psp_core import ContextSpec, ModelConfig, build_model


def context_key(number: int) -> str:
    """The key of the `number`-th context, shared with the load generator."""
    return f"ctx-{number:06d}"


class PredictBody(BaseModel):
    inputs: list[list[float]]


def _model_from_env() -> tuple[torch.nn.Module, dict[str, int]]:
    """The model of the environment's shape, and key -> bank row for `BARE_CONTEXTS` keys."""
    config = ModelConfig(
        kind=os.environ.get("BARE_KIND", "complex"),
        input_shape=(int(os.environ.get("BARE_INPUT", "64")),),
        hidden=tuple(int(v) for v in os.environ.get("BARE_HIDDEN", "256,256").split(",")),
    )
    model = build_model(config)
    model.eval()
    count = int(os.environ.get("BARE_CONTEXTS", "1000"))
    rows = model.bank.extend([ContextSpec(seed=n) for n in range(count)])
    return model, {context_key(n): row for n, row in zip(range(count), rows, strict=True)}


def create_app() -> FastAPI:
    """The app: `/healthz` and `POST /predict/{key}`."""
    model, rows = _model_from_env()
    lock = threading.Lock()
    app = FastAPI(title="bare predict endpoint")

    def forward(key: str, body: PredictBody) -> dict[str, Any]:
        row = rows.get(key)
        if row is None:
            raise HTTPException(404, f"no context has the key {key!r}")
        x = torch.tensor(body.inputs, dtype=torch.float32)
        index = torch.full((len(x),), row, dtype=torch.int64)
        with lock, torch.inference_mode():
            probabilities = torch.softmax(model(x, index), dim=1)
        return {
            "predictions": probabilities.argmax(dim=1).tolist(),
            "probabilities": probabilities.tolist(),
            "model_version": 0,
        }

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    if os.environ.get("BARE_MODE", "thread") == "inline":

        @app.post("/predict/{key}")
        async def predict_inline(key: str, body: PredictBody) -> dict[str, Any]:
            return forward(key, body)

    else:

        @app.post("/predict/{key}")
        def predict(key: str, body: PredictBody) -> dict[str, Any]:
            return forward(key, body)

    return app
