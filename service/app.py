"""The FastAPI application: routes, error handlers, metrics and the runtime's lifespan."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI, Response
from fastapi.telemetry import TelemetryConfig

from service import metrics
from service.api.auth import Authenticator
from service.api.errors import install_error_handlers
from service.api.http_metrics import HttpMetrics
from service.api.json_route import BodyLimits
from service.api.limits import BodySizeLimit
from service.api.openapi import install_openapi
from service.api.plain_predict import PlainPredict
from service.api.routes import api_router, checkpoints, health
from service.runtime.runtime import Runtime
from service.settings import Settings, get_settings

# FastAPI's own OpenTelemetry checks for a configured provider on every request, a twentieth
# of the server's CPU under predict load; the service reports through Prometheus instead.
_FASTAPI_TELEMETRY_OFF: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


def _runtime_lifespan(
    settings: Settings,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Opens the process's resources (`Runtime`) when the app starts and closes them after."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        authenticator = getattr(app.state, "authenticator", None)
        app.state.runtime = await Runtime.start(settings, authenticator)
        # Everything built so far (torch, the model, the routes, the registry's maps) lives as
        # long as the process. Frozen, it is left out of every later collection: under load,
        # each full collection walked it again, stopping the process for a third of a second
        # every second or two (the p99 of `benchmarks/predict_throughput.py`).
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
            await app.state.runtime.stop()

    return lifespan


def create_app(settings: Settings | None = None) -> FastAPI:
    """Builds the app; resources are opened in the lifespan, never at import time."""
    settings = settings or get_settings()
    app = FastAPI(
        title="Superposition continual-learning service",
        description="Thousands of models learning online from one set of superposed weights.",
        version="0.1.0",
        lifespan=_runtime_lifespan(settings),
        telemetry=None if settings.opentelemetry else _FASTAPI_TELEMETRY_OFF,
    )
    app.state.authenticator = Authenticator(settings.api_keys, required=settings.auth.required)
    app.state.body_limits = BodyLimits.configured(settings)
    app.include_router(api_router)
    install_openapi(app)
    install_error_handlers(app, settings)
    app.add_middleware(PlainPredict)  # inside the size limit and the metrics
    app.add_middleware(BodySizeLimit, max_bytes=settings.limits.max_body_bytes)
    app.add_middleware(HttpMetrics)  # outermost: it times the 413s of the size limit too
    _expose_metrics(app)
    return app


def create_worker_app(settings: Settings) -> FastAPI:
    """The training worker: the trainer in the lifespan; health, metrics and the checkpoint
    downloads of the API replicas."""
    app = FastAPI(title="psp worker", lifespan=_runtime_lifespan(settings), openapi_url=None)
    app.include_router(health.router)
    app.include_router(checkpoints.router)
    install_error_handlers(app, settings)
    _expose_metrics(app)
    return app


def _expose_metrics(app: FastAPI) -> None:
    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)
