"""Labelled traffic for the fault tests: batches posted with Idempotency-Keys, and what was
accepted, to compare with what the registry counted."""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx
import numpy as np


@dataclass
class Accepted:
    """One batch the service answered 202 for."""

    batch_id: str
    key: str
    inputs: list[list[float]]
    labels: list[int]


def stream_batches(
    bases: list[str],
    keys: list[str],
    batches: int,
    seed: int,
    accepted: list[Accepted],
    retry_seconds: float = 0.0,
) -> None:
    """Posts `batches` batches of 5 to 39 rows to random `keys`, taking the API processes of
    `bases` in turn; with `retry_seconds`, retries a failed request under the same
    Idempotency-Key (the server may be down), so each batch is accepted at most once."""
    rng = np.random.default_rng(seed)
    clients = [httpx.Client(base_url=base, timeout=10) for base in bases]
    try:
        for number in range(batches):
            client = clients[number % len(clients)]
            key = keys[int(rng.integers(0, len(keys)))]
            rows = int(rng.integers(5, 40))
            body = {
                "inputs": rng.random((rows, 64)).round(4).tolist(),
                "labels": rng.integers(0, 10, rows).tolist(),
            }
            headers = {"Idempotency-Key": f"{seed}-{number}"}
            deadline = time.monotonic() + retry_seconds
            while True:
                try:
                    response = client.post(f"/train/{key}", json=body, headers=headers)
                    if response.status_code == 202:
                        batch_id = response.json()["batch_id"]
                        accepted.append(Accepted(batch_id, key, body["inputs"], body["labels"]))
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            time.sleep(float(rng.uniform(0, 0.03)))
    finally:
        for client in clients:
            client.close()


def examples_seen(base: str) -> dict[str, int]:
    """Every context's `examples_seen`, as the registry counts them."""
    items = httpx.get(f"{base}/contexts", timeout=5).json()["items"]
    return {item["key"]: item["examples_seen"] for item in items}


def expected_counts(accepted: list[Accepted], keys: list[str]) -> dict[str, int]:
    """The examples accepted for each key."""
    return {key: sum(len(a.labels) for a in accepted if a.key == key) for key in keys}
