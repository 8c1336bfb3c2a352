"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.api.deps import RuntimeDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """200 while the process lives."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Something the service needs is down."}})
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    """200 when the model is loaded and the registry and the queue answer, else 503."""
    checks = {
        "model": True,
        "registry": await runtime.registry.ping(),
        "queue": await runtime.queue.ping(),
    }
    down = [name for name, ok in checks.items() if not ok]
    if down:
        return JSONResponse(
            {"detail": f"not ready: {', '.join(down)} unreachable; retry later", "checks": checks},
            status_code=503,
        )
    return JSONResponse({"status": "ready", "checks": checks})
