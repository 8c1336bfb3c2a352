"""`Client` (blocking) and `AsyncClient` (asyncio) for the service's HTTP API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, TypeVar

import httpx

from psp_client import calls
from psp_client.calls import Call
from psp_client.errors import error_for
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

T = TypeVar("T")

DEFAULT_TIMEOUT = 30.0


def _headers(api_key: str | None) -> dict[str, str]:
    return {"X-API-Key": api_key} if api_key else {}


def _request(client: httpx.Client | httpx.AsyncClient, call: Call[Any]) -> httpx.Request:
    return client.build_request(
        call.method, call.path, json=call.json, params=call.params, headers=call.headers
    )


def _result(call: Call[T], response: httpx.Response) -> T:
    if response.is_success:
        return call.read(response)
    raise error_for(response)


class Client:
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

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._http = httpx.Client(
            base_url=base_url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

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
        attempt = 1
        while True:
            response: httpx.Response | None = None
            try:
                response = self._http.send(_request(self._http, call))
            except httpx.TransportError:
                if not self.retry.should_retry(attempt, None):
                    raise
            if response is not None and not self.retry.should_retry(attempt, response):
                return _result(call, response)
            time.sleep(self.retry.delay(attempt, response))
            attempt += 1

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

    def model_info(self) -> ModelInfo:
        return self.send(calls.model_info())


class AsyncClient:
    """The asyncio twin of `Client`, with the same arguments and methods."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

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
        attempt = 1
        while True:
            response: httpx.Response | None = None
            try:
                response = await self._http.send(_request(self._http, call))
            except httpx.TransportError:
                if not self.retry.should_retry(attempt, None):
                    raise
            if response is not None and not self.retry.should_retry(attempt, response):
                return _result(call, response)
            await asyncio.sleep(self.retry.delay(attempt, response))
            attempt += 1

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

    async def model_info(self) -> ModelInfo:
        return await self.send(calls.model_info())
