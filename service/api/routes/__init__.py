"""One router per resource, collected in `api_router`."""

from typing import Any

from fastapi import APIRouter

from service.api.routes import contexts, feedback, health, inference_v2, model, predict, train
from service.api.schemas import Problem
from service.ui import routes as ui

# Any route behind API keys can answer these; any route with a body can be too large.
_GUARDED: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "No valid API key."},
    403: {"model": Problem, "description": "Wrong scope, or a context outside the key's prefix."},
    413: {"model": Problem, "description": "The body is over the size limit."},
    422: {"model": Problem, "description": "The request is invalid; the detail says why."},
}

# Routes are matched in this order; predict, the hottest, is tried first.
RESOURCE_ROUTERS = tuple(
    module.router for module in (predict, train, contexts, feedback, model, inference_v2)
)
api_router = APIRouter()
for resource in RESOURCE_ROUTERS:
    api_router.include_router(resource, responses=_GUARDED)
api_router.include_router(health.router)
api_router.include_router(ui.router)  # the operator's HTML page, outside the OpenAPI document
