"""Typed exceptions for the service's error answers, each carrying its `detail` sentence."""

from __future__ import annotations

import httpx


class PspError(Exception):
    """An error answer from the service.

    Attributes:
        status_code: The HTTP status.
        detail: The service's sentence: what is wrong and what to send instead.
        retry_after: Seconds the service asked to wait (429 and 503), else None.
    """

    def __init__(self, status_code: int, detail: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail
        self.retry_after = retry_after


class NotFound(PspError):
    """404: no such context, route, prediction id or checkpoint."""


class Gone(PspError):
    """410: the prediction ids expired before their labels arrived."""


class Conflict(PspError):
    """409: the context key or its seed or power is taken by another definition."""


class PayloadTooLarge(PspError):
    """413: too many rows or too many bytes in one request; split it."""


class InvalidRequest(PspError):
    """422: the request is invalid; `detail` says what to send instead."""


class TooManyRequests(PspError):
    """429: the train queue is full; retry after `retry_after` seconds."""


class Unavailable(PspError):
    """503: something the service needs is down; retry after `retry_after` seconds."""


_BY_STATUS: dict[int, type[PspError]] = {
    404: NotFound,
    409: Conflict,
    410: Gone,
    413: PayloadTooLarge,
    422: InvalidRequest,
    429: TooManyRequests,
    503: Unavailable,
}

RETRYABLE_STATUSES = frozenset({429, 503})


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The `Retry-After` header in seconds, or None when absent or not a number."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def error_for(response: httpx.Response) -> PspError:
    """The typed exception for an error answer."""
    try:
        body = response.json()
        detail = (
            str(body["detail"]) if isinstance(body, dict) and "detail" in body else response.text
        )
    except ValueError:
        detail = response.text
    kind = _BY_STATUS.get(response.status_code, PspError)
    return kind(response.status_code, detail, retry_after_seconds(response))
