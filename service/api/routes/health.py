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
    """200 when every shard's weights are loaded and healthy, the registry and every shard's
    queue answer and every background task runs, else 503 naming what is down."""
    missing = {
        shard.number: shard.host.weights_missing
        for shard in runtime.shards
        if shard.host.weights_missing is not None
    }
    checks = {
        "weights_loaded": not missing,
        "model": all(shard.host.healthy for shard in runtime.shards),
        "registry": await runtime.registry.ping(),
        "queue": all([await shard.queue.ping() for shard in runtime.shards]),
    }
    tasks_down = runtime.supervisor.down()
    checks["background_tasks"] = not tasks_down
    problems = [
        f"shard {number} has not loaded its weights yet: {reason}"
        for number, reason in missing.items()
    ]
    if not checks["model"]:
        problems.append("the model's weights failed their health check and are being restored")
    unreachable = [name for name in ("registry", "queue") if not checks[name]]
    if unreachable:
        problems.append(f"{' and '.join(unreachable)} unreachable")
    if tasks_down:
        problems.append(f"background task {', '.join(tasks_down)} crashed and is restarting")
    if problems:
        return JSONResponse(
            {
                "detail": f"not ready: {'; '.join(problems)}; retry later",
                "checks": checks,
                "tasks_down": tasks_down,
            },
            status_code=503,
        )
    return JSONResponse({"status": "ready", "checks": checks})
