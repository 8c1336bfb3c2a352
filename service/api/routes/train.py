"""Training: queue labelled rows for a context."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status

from service.api.deps import KeyPath, RuntimeDep, TrainingCaller
from service.api.json_route import BoundedBodyRoute
from service.api.queued import queued_answer
from service.api.schemas import KEY_PATTERN, TrainAccepted, TrainApplied, TrainRequest, problems

router = APIRouter(tags=["training"], route_class=BoundedBodyRoute)


@router.post(
    "/train/{key}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=TrainApplied | TrainAccepted,
    responses={
        200: {
            "model": TrainApplied,
            "description": "Done (with wait=true): applied, or refused with the reason.",
        },
        **problems(404, 413, 422, 429, 503, 504),
    },
)
async def train(
    key: KeyPath,
    body: TrainRequest,
    runtime: RuntimeDep,
    response: Response,
    caller: TrainingCaller,
    wait: Annotated[bool, Query(description="Answer only once the batch is applied.")] = False,
    idempotency_key: Annotated[
        str | None,
        Header(
            pattern=KEY_PATTERN,  # the syntax of context keys
            description="Retrying with the same key, context and rows within 5 minutes queues "
            "the batch once; the same key with another batch answers 422.",
        ),
    ] = None,
) -> TrainApplied | TrainAccepted:
    """Queue a labelled batch; 202 once durably queued, 200 once the trainer is done with it
    (wait=true), saying whether it was applied."""
    done = await runtime.train_intake.submit(
        key,
        body.inputs,
        body.labels,
        wait=wait,
        idempotency_key=idempotency_key,
        client=caller.key_id,
    )
    return queued_answer(done, response, TrainAccepted, TrainApplied)
