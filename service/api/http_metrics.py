"""A pure ASGI middleware that times every request and counts it by route template, and keeps
the count of requests in flight (`service.api.requests_in_flight`).

It reads the matched route from the ASGI scope after the app has handled the request, so routing
happens once. Unmatched paths are labelled `none`, and methods other than HTTP's own `other`,
which keeps the label set bounded whatever clients send; `/metrics` itself is not recorded.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics
from service.api.requests_in_flight import REQUESTS_IN_FLIGHT

UNMATCHED = "none"
SKIPPED = frozenset({"/metrics"})
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})
OTHER_METHOD = "other"


class _Series:
    """The labelled series of the two metrics, each looked up once: prometheus_client's
    `labels()` checks and locks on every call, which cost a plain predict request a tenth of
    its time (`service.api.plain_predict`)."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str, int], Any] = {}
        self._latencies: dict[tuple[str, str], Any] = {}

    def record(self, handler: str, method: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else OTHER_METHOD
        count = self._counts.get((handler, method, status))
        if count is None:
            count = metrics.HTTP_REQUESTS.labels(handler, method, str(status))
            self._counts[handler, method, status] = count
        latency = self._latencies.get((handler, method))
        if latency is None:
            latency = metrics.HTTP_LATENCY.labels(handler, method)
            self._latencies[handler, method] = latency
        count.inc()
        latency.observe(seconds)


class HttpMetrics:
    """Records `psp_http_requests_total` and `psp_http_request_duration_seconds`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._series = _Series()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers if the app raises before responding

        async def send_recording_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        REQUESTS_IN_FLIGHT.enter()
        try:
            await self.app(scope, receive, send_recording_status)
        finally:
            REQUESTS_IN_FLIGHT.leave()
            route = scope.get("route")
            handler = getattr(route, "path", UNMATCHED)
            if handler not in SKIPPED:
                elapsed = time.perf_counter() - started
                self._series.record(handler, scope["method"], status, elapsed)
