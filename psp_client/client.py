"""`Client` (blocking) and `AsyncClient` (asyncio) for the service's HTTP API.

Both send the requests that `psp_client.calls` describes, through `Tries` for retries; they
differ only in how they send and wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Generic, TypeVar

import httpx

from psp_client import calls
from psp_client.calls import Call
from psp_client.results import (
    AccuracyHour,
    Context,
    ContextPage,
    FeedbackResult,
    ModelInfo,
    Prediction,
    TrainResult,
)
from psp_client.retry import RetryPolicy
from psp_client.tries import Tries

T = TypeVar("T")
Transport = TypeVar("Transport", httpx.BaseTransport, httpx.AsyncBaseTransport)

DEFAULT_TIMEOUT = 30.0


class _BaseClient(Generic[Transport]):
    """How both clients are made; each opens its own kind of httpx client in `_open`."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: Transport | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = self._open(
            base_url=base_url, headers=headers, timeout=timeout, transport=transport
        )

    def _open(self, **options: Any) -> Any:
        raise NotImplementedError


class Client(_BaseClient[httpx.BaseTransport]):
    """A blocking client.

    Args:
        base_url: Where the service listens, e.g. `http://127.0.0.1:8000`.
        api_key: Sent as `X-API-Key` when the service has API keys.
        retry: When to retry 429, 503 and failed connections; `NO_RETRIES` turns them off.
        timeout: Seconds to wait for each answer.
        transport: An httpx transport, to talk to an app in the same process.

    Raises (from every method): `NotFound`, `Conflict`, `Gone`, `PayloadTooLarge`,
    `InvalidRequest`, `TooManyRequests`, `Unavailable` or `PspError` for other answers, once the
    retries are spent; `httpx.TransportError` when the service cannot be reached.
    """

    _http: httpx.Client

    def _open(self, **options: Any) -> httpx.Client:
        return httpx.Client(**options)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def send(self, call: Call[T]) -> T:
        """Sends `call`, retrying as the policy allows, and reads its answer."""
        tries = Tries(call, self.retry)
        for pause in tries.pauses():
            if pause:
                time.sleep(pause)
            with tries.attempt():
                tries.answered(self._http.send(call.request(self._http)))
        return tries.result()

    def create_context(
        self, key: str, seed: int | None = None, power: float | None = None
    ) -> Context:
        """Registers `key` (the same definition again is not an error)."""
        return self.send(calls.create_context(key, seed, power))

    def get_context(self, key: str) -> Context:
        """The context, with its rolling-window accuracy in `recent`."""
        return self.send(calls.get_context(key))

    def context_history(self, key: str, hours: int = 24) -> list[AccuracyHour]:
        """Hourly train and feedback scores over the last `hours` hours, oldest first."""
        return self.send(calls.context_history(key, hours))

    def list_contexts(self, limit: int = 100, offset: int = 0, prefix: str = "") -> ContextPage:
        return self.send(calls.list_contexts(limit, offset, prefix))

    def delete_context(self, key: str) -> None:
        self.send(calls.delete_context(key))

    def train(
        self,
        key: str,
        inputs: Any,
        labels: Sequence[int],
        *,
        wait: bool = False,
        idempotency_key: str | None = None,
    ) -> TrainResult:
        """Queues labelled rows; a fresh Idempotency-Key is made unless one is given."""
        return self.send(
            calls.train(key, inputs, labels, wait=wait, idempotency_key=idempotency_key)
        )

    def predict(self, key: str, inputs: Any, *, remember: bool = False) -> Prediction:
        """Classes and probabilities; with `remember`, ids to send the labels back later."""
        return self.send(calls.predict(key, inputs, remember=remember))

    def feedback(
        self, key: str, prediction_ids: Sequence[str], labels: Sequence[int], *, wait: bool = False
    ) -> FeedbackResult:
        """Sends the true labels of remembered predictions; each id is learned once."""
        return self.send(calls.feedback(key, prediction_ids, labels, wait=wait))

    def model_info(self, shard: int = 0) -> ModelInfo:
        """The model of one shard (shard 0 unless the service runs several)."""
        return self.send(calls.model_info(shard))


class AsyncClient(_BaseClient[httpx.AsyncBaseTransport]):
    """The asyncio twin of `Client`, with the same arguments and methods."""

    _http: httpx.AsyncClient

    def _open(self, **options: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(**options)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(self, call: Call[T]) -> T:
        """Sends `call`, retrying as the policy allows, and reads its answer."""
        tries = Tries(call, self.retry)
        for pause in tries.pauses():
            if pause:
                await asyncio.sleep(pause)
            with tries.attempt():
                tries.answered(await self._http.send(call.request(self._http)))
        return tries.result()

    async def create_context(
        self, key: str, seed: int | None = None, power: float | None = None
    ) -> Context:
        return await self.send(calls.create_context(key, seed, power))

    async def get_context(self, key: str) -> Context:
        return await self.send(calls.get_context(key))

    async def context_history(self, key: str, hours: int = 24) -> list[AccuracyHour]:
        return await self.send(calls.context_history(key, hours))

    async def list_contexts(
        self, limit: int = 100, offset: int = 0, prefix: str = ""
    ) -> ContextPage:
        return await self.send(calls.list_contexts(limit, offset, prefix))

    async def delete_context(self, key: str) -> None:
        await self.send(calls.delete_context(key))

    async def train(
        self,
        key: str,
        inputs: Any,
        labels: Sequence[int],
        *,
        wait: bool = False,
        idempotency_key: str | None = None,
    ) -> TrainResult:
        return await self.send(
            calls.train(key, inputs, labels, wait=wait, idempotency_key=idempotency_key)
        )

    async def predict(self, key: str, inputs: Any, *, remember: bool = False) -> Prediction:
        return await self.send(calls.predict(key, inputs, remember=remember))

    async def feedback(
        self, key: str, prediction_ids: Sequence[str], labels: Sequence[int], *, wait: bool = False
    ) -> FeedbackResult:
        return await self.send(calls.feedback(key, prediction_ids, labels, wait=wait))

    async def model_info(self, shard: int = 0) -> ModelInfo:
        return await self.send(calls.model_info(shard))
