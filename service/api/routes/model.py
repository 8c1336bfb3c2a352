"""The hosted model: its config, version and size."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import RuntimeDep
from service.api.schemas import ModelInfo

router = APIRouter(tags=["model"])


@router.get("/model")
async def model_info(runtime: RuntimeDep) -> ModelInfo:
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
