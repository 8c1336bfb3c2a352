"""The service's operations as plain request descriptions, shared by `Client` and `AsyncClient`.

Each builder returns a `Call`: what to send and how to read a successful answer. The two
clients differ only in how they send it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx

from psp_client import results
from psp_client.errors import error_for

T = TypeVar("T")


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and the reader of its successful answer."""

    method: str
    path: str
    read: Callable[[httpx.Response], T]
    json: Any = None
    params: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        return http.build_request(
            self.method, self.path, json=self.json, params=self.params, headers=self.headers
        )

    def answer(self, response: httpx.Response) -> T:
        """The read answer of a success; raises the typed `PspError` of an error answer."""
        if response.is_success:
            return self.read(response)
        raise error_for(response)


def rows_of(inputs: Any) -> list[Any]:
    """Rows as JSON-ready lists; numpy arrays (anything with `tolist`) are converted."""
    if hasattr(inputs, "tolist"):
        converted: list[Any] = inputs.tolist()
        return converted
    return list(inputs)


def create_context(
    key: str, seed: int | None = None, power: float | None = None
) -> Call[results.Context]:
    body: dict[str, Any] = {"key": key}
    if seed is not None:
        body["seed"] = seed
    if power is not None:
        body["power"] = power
    return Call("POST", "/contexts", lambda r: results.Context.from_json(r.json()), json=body)


def get_context(key: str) -> Call[results.Context]:
    return Call("GET", f"/contexts/{key}", lambda r: results.Context.from_json(r.json()))


def context_history(key: str, hours: int = 24) -> Call[list[results.AccuracyHour]]:
    return Call(
        "GET",
        f"/contexts/{key}/history",
        lambda r: [results.AccuracyHour.from_json(b) for b in r.json()["buckets"]],
        params={"hours": hours},
    )


def list_contexts(limit: int = 100, offset: int = 0, prefix: str = "") -> Call[results.ContextPage]:
    params = {"limit": limit, "offset": offset, "prefix": prefix}
    return Call(
        "GET", "/contexts", lambda r: results.ContextPage.from_json(r.json()), params=params
    )


def delete_context(key: str) -> Call[None]:
    return Call("DELETE", f"/contexts/{key}", lambda r: None)


def train(
    key: str,
    inputs: Any,
    labels: Sequence[int],
    *,
    wait: bool = False,
    idempotency_key: str | None = None,
) -> Call[results.TrainResult]:
    """A train call always carries an Idempotency-Key, so that a retry never trains twice."""
    token = idempotency_key or uuid.uuid4().hex
    return Call(
        "POST",
        f"/train/{key}",
        lambda r: results.TrainResult.from_json(r.json(), token),
        json={"inputs": rows_of(inputs), "labels": list(labels)},
        params={"wait": "true"} if wait else {},
        headers={"Idempotency-Key": token},
    )


def predict(key: str, inputs: Any, *, remember: bool = False) -> Call[results.Prediction]:
    return Call(
        "POST",
        f"/predict/{key}",
        lambda r: results.Prediction.from_json(r.json()),
        json={"inputs": rows_of(inputs)},
        params={"remember": "true"} if remember else {},
    )


def feedback(
    key: str, prediction_ids: Sequence[str], labels: Sequence[int], *, wait: bool = False
) -> Call[results.FeedbackResult]:
    return Call(
        "POST",
        f"/feedback/{key}",
        lambda r: results.FeedbackResult.from_json(r.json()),
        json={"prediction_ids": list(prediction_ids), "labels": list(labels)},
        params={"wait": "true"} if wait else {},
    )


def model_info(shard: int = 0) -> Call[results.ModelInfo]:
    return Call(
        "GET", "/model", lambda r: results.ModelInfo.from_json(r.json()), params={"shard": shard}
    )
