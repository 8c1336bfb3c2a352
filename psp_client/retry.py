"""When to retry a request, and how long to wait first."""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx

from psp_client.errors import RETRYABLE_STATUSES, retry_after_seconds


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of 429, 503 and failed connections, with exponential backoff and jitter.

    A `Retry-After` header from the service wins over the backoff, capped at `max_delay`.

    Attributes:
        attempts: Tries in all, the first included; 1 turns retries off.
        base_delay: The wait before the first retry, doubled for each further one.
        max_delay: The longest wait between two tries.
    """

    attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 10.0

    def should_retry(self, attempt: int, response: httpx.Response | None) -> bool:
        """Whether try number `attempt` (from 1) is followed by another; `response` is None
        when the connection failed."""
        if attempt >= self.attempts:
            return False
        return response is None or response.status_code in RETRYABLE_STATUSES

    def delay(self, attempt: int, response: httpx.Response | None) -> float:
        """Seconds to wait after try number `attempt` (from 1)."""
        asked = retry_after_seconds(response) if response is not None else None
        if asked is not None:
            return min(asked, self.max_delay)
        backoff = self.base_delay * 2 ** (attempt - 1)
        return min(backoff * random.uniform(0.5, 1.0), self.max_delay)


NO_RETRIES = RetryPolicy(attempts=1)
