"""Prediction: class probabilities from one context's model."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from service.api.deps import Predictor, RuntimeDep
from service.api.json_route import OrjsonRoute
from service.api.schemas import KEY_PATTERN, PredictRequest, PredictResponse, Problem

router = APIRouter(tags=["prediction"], route_class=OrjsonRoute)


@router.post(
    "/predict/{key}",
    responses={
        404: {"model": Problem},
        413: {"model": Problem},
        422: {"model": Problem},
        503: {"model": Problem},
    },
    response_model_exclude_none=True,
)
async def predict(
    key: Annotated[str, Path(pattern=KEY_PATTERN)],
    body: PredictRequest,
    runtime: RuntimeDep,
    caller: Predictor,
    probabilities: Annotated[
        bool, Query(description="false leaves every probability out of the answer")
    ] = True,
    top_k: Annotated[
        int | None,
        Query(ge=1, description="answer each row's N most probable classes instead of all"),
    ] = None,
) -> PredictResponse:
    """Predict classes and probabilities for rows under one context."""
    result = await runtime.prediction.predict(key, body.inputs, top_k=top_k)
    answer = PredictResponse(
        predictions=result.classes.tolist(), model_version=result.model_version
    )
    if top_k is not None:
        classes, top_probabilities = result.top(top_k)
        answer.top_classes = classes.tolist()
        if probabilities:
            answer.top_probabilities = top_probabilities.tolist()
    elif probabilities:
        answer.probabilities = result.probabilities.tolist()
    return answer
