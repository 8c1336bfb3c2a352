"""Delayed labels: the true classes of remembered predictions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from service.api.deps import KeyPath, RuntimeDep, TrainingCaller
from service.api.json_route import BoundedBodyRoute
from service.api.queued import queued_answer
from service.api.schemas import (
    FeedbackAccepted,
    FeedbackApplied,
    FeedbackRequest,
    Problem,
    problems,
)

router = APIRouter(tags=["training"], route_class=BoundedBodyRoute)


@router.post(
    "/feedback/{key}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=FeedbackApplied | FeedbackAccepted,
    responses={
        200: {"model": FeedbackApplied, "description": "Done (with wait=true)."},
        404: {"model": Problem, "description": "Unknown context or prediction ids."},
        409: {"model": Problem, "description": "Some ids already have their labels."},
        410: {"model": Problem, "description": "Some ids have expired."},
        **problems(422, 429, 503, 504),
    },
)
async def feedback(
    key: KeyPath,
    body: FeedbackRequest,
    runtime: RuntimeDep,
    response: Response,
    caller: TrainingCaller,
    wait: Annotated[bool, Query(description="Answer only once the rows are learned.")] = False,
) -> FeedbackApplied | FeedbackAccepted:
    """Queue remembered rows with their true labels for training, once per prediction id, and
    score the predictions made for them. One unusable id leaves every id as it was."""
    done = await runtime.feedback.label(key, body.prediction_ids, body.labels, wait=wait)
    return queued_answer(done, response, FeedbackAccepted, FeedbackApplied, correct=done.correct)
