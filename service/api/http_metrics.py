"""A pure ASGI middleware that times every request and counts it by route template, and keeps
the count of requests in flight (`service.api.requests_in_flight`).

It reads the matched route from the ASGI scope after the app has handled the request, so routing
happens once. Unmatched paths are labelled `none`, which keeps the label set bounded whatever
paths clients send; `/metrics` itself is not recorded.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics
from service.api.requests_in_flight import REQUESTS_IN_FLIGHT

UNMATCHED = "none"
SKIPPED = frozenset({"/metrics"})


class HttpMetrics:
    """Records `psp_http_requests_total` and `psp_http_request_duration_seconds`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

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
                method = scope["method"]
                metrics.HTTP_REQUESTS.labels(handler, method, str(status)).inc()
                metrics.HTTP_LATENCY.labels(handler, method).observe(time.perf_counter() - started)
