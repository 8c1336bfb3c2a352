"""One router per resource, collected in `api_router`."""

from fastapi import APIRouter

from service.api.routes import contexts, health, model, predict, train

api_router = APIRouter()
for module in (contexts, train, predict, model, health):
    api_router.include_router(module.router)
