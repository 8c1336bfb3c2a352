"""Delayed labels: the true classes of remembered predictions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from service.api.deps import RuntimeDep, TrainingCaller
from service.api.json_route import OrjsonRoute
from service.api.schemas import (
    KEY_PATTERN,
    FeedbackAccepted,
    FeedbackApplied,
    FeedbackRequest,
    Problem,
)

router = APIRouter(tags=["training"], route_class=OrjsonRoute)


@router.post(
    "/feedback/{key}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=FeedbackApplied | FeedbackAccepted,
    responses={
        200: {"model": FeedbackApplied, "description": "Done (with wait=true)."},
        404: {"model": Problem, "description": "Unknown context or prediction ids."},
        409: {"model": Problem, "description": "Some ids already have their labels."},
        410: {"model": Problem, "description": "Some ids have expired."},
        422: {"model": Problem},
        429: {"model": Problem},
        503: {"model": Problem},
        504: {"model": Problem},
    },
)
async def feedback(
    key: Annotated[str, Path(pattern=KEY_PATTERN)],
    body: FeedbackRequest,
    runtime: RuntimeDep,
    response: Response,
    caller: TrainingCaller,
    wait: Annotated[bool, Query(description="Answer only once the rows are learned.")] = False,
) -> FeedbackApplied | FeedbackAccepted:
    """Queue remembered rows with their true labels for training, once per prediction id, and
    score the predictions made for them. One unusable id leaves every id as it was."""
    done = await runtime.feedback.label(key, body.prediction_ids, body.labels, wait=wait)
    if done.model_version is None:
        return FeedbackAccepted(
            batch_id=done.batch_id, accepted=done.accepted, correct=done.correct
        )
    response.status_code = status.HTTP_200_OK
    return FeedbackApplied(
        batch_id=done.batch_id,
        accepted=done.accepted,
        correct=done.correct,
        applied=done.refused is None,
        model_version=done.model_version,
        reason=done.refused,
    )
