"""The hosted models, one per shard: config, version and size; rollback; dead letters."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.api.deps import Admin, Reader, RuntimeDep
from service.api.json_route import BoundedBodyRoute
from service.api.schemas import (
    DeadLetterOut,
    DeadLetterPage,
    ModelInfo,
    RollbackRequest,
    problems,
)

router = APIRouter(tags=["model"], route_class=BoundedBodyRoute)


STORED_BYTES_PER_CONTEXT = 8
"""A context is defined by one 64-bit seed or exponent in the registry."""

ShardQuery = Annotated[int, Query(ge=0, description="The shard (0 with one shard).")]


@router.get("/model", responses=problems(422, 503))
async def model_info(runtime: RuntimeDep, caller: Reader, shard: ShardQuery = 0) -> ModelInfo:
    """One shard's model: its config, version, live contexts and parameters, and their cost."""
    held = runtime.shard(shard)
    host = held.host
    live = await runtime.registry.live_per_shard()
    return ModelInfo(
        shard=shard,
        shards=runtime.settings.shards.count,
        config=host.config.to_dict(),
        model_version=host.model_version,
        contexts=live[shard],
        bank_rows=host.bank_size,
        parameters=host.parameter_count,
        bytes_per_context=host.learner.model.bank.bytes_per_context(),
        stored_bytes_per_context=STORED_BYTES_PER_CONTEXT,
        device=str(host.device),
        role=runtime.settings.role,
        checkpoints=sorted({info.version for info in held.store.list()}),
        training=runtime.settings.learning_summary(),
    )


@router.post("/model/rollback", responses=problems(404, 422, 503, 504))
async def rollback(body: RollbackRequest, runtime: RuntimeDep, caller: Admin) -> ModelInfo:
    """Restore a kept checkpoint of one shard's model as a new version (admin without a key
    prefix)."""
    caller.require_whole_model("admin")
    held = runtime.shard(body.shard)
    await held.rollback.rollback(body.version)
    if held.follower is not None:
        await held.follower.catch_up()
    info = await model_info(runtime, caller, body.shard)
    return info.model_copy(update={"restored_from": body.version})


@router.get("/model/dead-letters", responses=problems(422, 503))
async def dead_letters(
    runtime: RuntimeDep,
    caller: Admin,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    shard: ShardQuery = 0,
) -> DeadLetterPage:
    """One shard's train entries set aside as poison, newest first (admin without a key
    prefix), each with its reason."""
    # The queue is every tenant's, and an entry that could not be decoded names no context.
    caller.require_whole_model("admin", "reads the train entries of every context")
    letters, total = await runtime.shard(shard).queue.dead_letters(limit)
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
