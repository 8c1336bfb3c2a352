"""The soak's clients: their mixed register / train / predict operations, and what they know
of the rows the service accepted."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import httpx
import numpy as np
from _load import Recorder
from _service_requests import JSON_HEADERS, predict_one

RETRIES = 5
"""Extra tries of a train request that failed (5xx or transport error) under its key."""


@dataclass
class TrainBody:
    """A pre-encoded train body and its row count."""

    content: bytes
    rows: int


def make_bodies(rng: np.random.Generator, count: int, max_rows: int) -> list[TrainBody]:
    """`count` train bodies of 1..`max_rows` random rows of the default 64-wide input."""
    bodies = []
    for _ in range(count):
        rows = int(rng.integers(1, max_rows + 1))
        body = {
            "inputs": rng.random((rows, 64)).round(4).tolist(),
            "labels": rng.integers(0, 10, rows).tolist(),
        }
        bodies.append(TrainBody(json.dumps(body).encode(), rows))
    return bodies


@dataclass
class SoakState:
    """What the clients know: live keys, accepted rows per key and unsettled requests.

    Attributes:
        keys: Contexts registered so far (by this run).
        accepted: Rows per key the service accepted (202, or 200 with wait=true).
        unsettled: Train requests whose acceptance stayed unknown after every retry.
        throttled: 429 answers, each honoured by waiting its Retry-After.
    """

    keys: list[str]
    accepted: Counter[str] = field(default_factory=Counter)
    unsettled: int = 0
    throttled: int = 0
    deadline: float = 0.0  # perf_counter() when the load ends


class SoakClients:
    """The mixed operations of the soak, sharing one `Recorder` and one `SoakState`."""

    def __init__(self, args: argparse.Namespace, state: SoakState) -> None:
        self.args = args
        self.state = state
        self.recorder = Recorder()
        self.run_id = uuid.uuid4().hex[:8]
        self.rngs = [random.Random(args.seed * 1000 + n) for n in range(args.clients)]
        self.sequence = [0] * args.clients
        self.bodies = make_bodies(np.random.default_rng(args.seed), 128, args.max_train_rows)
        predict_rng = np.random.default_rng(args.seed + 1)
        self.predicts = [
            json.dumps({"inputs": predict_rng.random((n % 4 + 1, 64)).round(4).tolist()}).encode()
            for n in range(64)
        ]

    async def operation(self, client: httpx.AsyncClient, number: int) -> None:
        rng = self.rngs[number]
        self.sequence[number] += 1
        draw = rng.random()
        if draw < self.args.register_share:
            await self.register(client, f"soak-{self.run_id}-{number}-{self.sequence[number]}")
        elif draw < self.args.register_share + self.args.train_share:
            await self.train(client, rng, f"{self.run_id}-{number}-{self.sequence[number]}")
        else:
            await predict_one(self.recorder, client, rng, self.state.keys, self.predicts)

    async def register(self, client: httpx.AsyncClient, key: str) -> None:
        response = await self.recorder.send(
            client, "register", "POST", "/contexts", json={"key": key}
        )
        if response is not None and response.status_code in (200, 201):
            self.state.keys.append(key)

    async def train(self, client: httpx.AsyncClient, rng: random.Random, token: str) -> None:
        """One batch under one Idempotency-Key, retried until its fate is known."""
        key = self.state.keys[rng.randrange(len(self.state.keys))]
        body = self.bodies[rng.randrange(len(self.bodies))]
        wait = rng.random() < self.args.wait_share
        route = "train?wait" if wait else "train"
        url = f"/train/{key}" + ("?wait=true" if wait else "")
        headers = {**JSON_HEADERS, "Idempotency-Key": token}
        failures = 0
        while failures <= RETRIES:
            response = await self.recorder.send(
                client, route, "POST", url, content=body.content, headers=headers
            )
            if response is not None and response.status_code in (200, 202):
                self.state.accepted[key] += body.rows
                return
            if response is not None and response.status_code == 429:
                self.state.throttled += 1
                if time.perf_counter() > self.state.deadline:
                    return  # a 429 queued nothing, so giving up after the load ends is safe
                await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                continue
            if response is not None and response.status_code < 500:
                return  # refused (4xx): nothing was queued
            failures += 1
            await asyncio.sleep(0.2)
        self.state.unsettled += 1
