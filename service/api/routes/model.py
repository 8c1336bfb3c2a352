"""The hosted model: its config, version and size."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import Admin, Reader, RuntimeDep
from service.api.json_route import OrjsonRoute
from service.api.schemas import ModelInfo, Problem, RollbackRequest

router = APIRouter(tags=["model"], route_class=OrjsonRoute)


@router.get("/model")
async def model_info(runtime: RuntimeDep, caller: Reader) -> ModelInfo:
    """The model's config, version, number of contexts and parameters."""
    host = runtime.host
    return ModelInfo(
        config=host.config.to_dict(),
        model_version=host.model_version,
        contexts=host.context_count,
        parameters=host.parameter_count,
        bytes_per_context=host.learner.model.bank.bytes_per_context(),
        device=str(host.device),
        role=runtime.settings.role,
        checkpoints=[info.version for info in runtime.store.list()],
    )


@router.post(
    "/model/rollback",
    responses={
        404: {"model": Problem},
        422: {"model": Problem},
        503: {"model": Problem},
        504: {"model": Problem},
    },
)
async def rollback(body: RollbackRequest, runtime: RuntimeDep, caller: Admin) -> ModelInfo:
    """Restore a kept checkpoint as a new version (admin without a key prefix)."""
    caller.require_whole_model("admin")
    assert runtime.rollback is not None
    await runtime.rollback.rollback(body.version)
    if runtime.follower is not None:
        await runtime.follower.catch_up()
    return await model_info(runtime, caller)
