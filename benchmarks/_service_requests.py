"""The requests the HTTP benchmarks send: prebuilt bodies, context registration, predicts."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence

import httpx
import numpy as np
from _load import Recorder, drive, run_async


def register_contexts(base_url: str, keys: Sequence[str], chunk: int = 10_000) -> float:
    """Registers keys with `POST /contexts:batch`, `chunk` at a time.

    Returns:
        Wall seconds spent in the registration requests.
    """
    spent = 0.0
    with httpx.Client(base_url=base_url, timeout=600) as client:
        for start in range(0, len(keys), chunk):
            body = {"contexts": [{"key": key} for key in keys[start : start + chunk]]}
            began = time.perf_counter()
            response = client.post("/contexts:batch", json=body)
            spent += time.perf_counter() - began
            if response.status_code != 200:
                raise RuntimeError(f"registration failed: {response.status_code} {response.text}")
    return spent


def json_bodies(rng: np.random.Generator, count: int, rows: int, width: int) -> list[bytes]:
    """`count` pre-encoded predict bodies of `rows` random rows, so that the load generator
    spends no time serialising."""
    return [
        json.dumps({"inputs": rng.random((rows, width)).round(4).tolist()}).encode()
        for _ in range(count)
    ]


def train_bodies(rng: np.random.Generator, count: int, rows: int, width: int) -> list[bytes]:
    """`count` pre-encoded train bodies of `rows` random rows and labels."""
    return [
        json.dumps(
            {
                "inputs": rng.random((rows, width)).round(4).tolist(),
                "labels": rng.integers(0, 10, rows).tolist(),
            }
        ).encode()
        for _ in range(count)
    ]


JSON_HEADERS = {"content-type": "application/json"}


async def predict_one(
    recorder: Recorder,
    client: httpx.AsyncClient,
    rng: random.Random,
    keys: Sequence[str],
    bodies: Sequence[bytes],
) -> httpx.Response | None:
    """POSTs a random one of `bodies` to `/predict/{key}` for a random one of `keys` (drawn in
    that order), recorded under the route `predict`."""
    key = keys[rng.randrange(len(keys))]
    body = bodies[rng.randrange(len(bodies))]
    return await recorder.send(
        client, "predict", "POST", f"/predict/{key}", content=body, headers=JSON_HEADERS
    )


def sequential_predicts(
    base_url: str, keys: Sequence[str], bodies: Sequence[bytes], count: int, seed: int
) -> list[float]:
    """Latencies of `count` predicts sent one after another by a single client (`predict_one`
    with `random.Random(seed)`).

    Raises:
        RuntimeError: A predict got no 200 answer.
    """
    recorder = Recorder()
    rng = random.Random(seed)

    async def operation(client: httpx.AsyncClient, number: int) -> None:
        await predict_one(recorder, client, rng, keys, bodies)

    run_async(drive(base_url, operation, clients=1, seconds=300, max_operations=count))
    if recorder.non_ok("predict"):
        raise RuntimeError(f"{recorder.non_ok('predict')} predicts failed on {base_url}")
    return recorder.latencies["predict"]
