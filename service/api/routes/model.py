"""The hosted model: its config, version and size."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.api.deps import Admin, Reader, RuntimeDep
from service.api.json_route import OrjsonRoute
from service.api.schemas import (
    DeadLetterOut,
    DeadLetterPage,
    ModelInfo,
    RollbackRequest,
    problems,
)

router = APIRouter(tags=["model"], route_class=OrjsonRoute)


STORED_BYTES_PER_CONTEXT = 8
"""A context is defined by one 64-bit seed or exponent in the registry."""


@router.get("/model", responses=problems(503))
async def model_info(runtime: RuntimeDep, caller: Reader) -> ModelInfo:
    """The model's config, version, number of live contexts and parameters, and their cost."""
    host = runtime.host
    return ModelInfo(
        config=host.config.to_dict(),
        model_version=host.model_version,
        contexts=await runtime.registry.count_live(),
        bank_rows=host.context_count,
        parameters=host.parameter_count,
        bytes_per_context=host.learner.model.bank.bytes_per_context(),
        stored_bytes_per_context=STORED_BYTES_PER_CONTEXT,
        device=str(host.device),
        role=runtime.settings.role,
        checkpoints=sorted({info.version for info in runtime.store.list()}),
        training=runtime.settings.learning_summary(),
    )


@router.post("/model/rollback", responses=problems(404, 422, 503, 504))
async def rollback(body: RollbackRequest, runtime: RuntimeDep, caller: Admin) -> ModelInfo:
    """Restore a kept checkpoint as a new version (admin without a key prefix)."""
    caller.require_whole_model("admin")
    assert runtime.rollback is not None
    await runtime.rollback.rollback(body.version)
    if runtime.follower is not None:
        await runtime.follower.catch_up()
    info = await model_info(runtime, caller)
    return info.model_copy(update={"restored_from": body.version})


@router.get("/model/dead-letters", responses=problems(422, 503))
async def dead_letters(
    runtime: RuntimeDep, caller: Admin, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> DeadLetterPage:
    """Train entries set aside as poison, newest first (admin), each with its reason."""
    letters, total = await runtime.queue.dead_letters(limit)
    return DeadLetterPage(
        items=[
            DeadLetterOut(
                entry_id=letter.entry_id,
                reason=letter.reason,
                context_index=letter.context_index,
                examples=letter.examples,
                dead_lettered_at=letter.dead_lettered_at,
            )
            for letter in letters
        ],
        total=total,
    )
