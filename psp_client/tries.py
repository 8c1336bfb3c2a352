"""One call's tries under a retry policy, without I/O, so that both clients share the loop."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

import httpx

from psp_client.calls import Call
from psp_client.retry import RetryPolicy

T = TypeVar("T")


class Tries(Generic[T]):
    """Decides whether another try of `call` follows, how long to wait before it, and what the
    call returns. The client does the sending and the waiting: it waits each of `pauses()`,
    sends one try inside `attempt()`, reports its answer to `answered`, and ends with `result()`.
    """

    def __init__(self, call: Call[T], policy: RetryPolicy) -> None:
        self.call = call
        self.policy = policy
        self._response: httpx.Response | None = None
        self._failure: httpx.TransportError | None = None

    def pauses(self) -> Iterator[float]:
        """Seconds to wait before each try: 0 before the first, then the policy's delay after
        each try it retries."""
        yield 0.0
        attempt = 1
        while self.policy.should_retry(attempt, self._response):
            yield self.policy.delay(attempt, self._response)
            attempt += 1

    @contextmanager
    def attempt(self) -> Iterator[None]:
        """One try: a failed connection inside is kept as its outcome, for the policy to judge
        and `result` to raise."""
        self._response = self._failure = None
        try:
            yield
        except httpx.TransportError as failure:
            self._failure = failure

    def answered(self, response: httpx.Response) -> None:
        self._response = response

    def result(self) -> T:
        """The last try's answer, read; raises its error answer or its failed connection."""
        if self._failure is not None:
            raise self._failure
        assert self._response is not None, "result() before any try"
        return self.call.answer(self._response)
