"""Prediction: class probabilities from one context's model."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from service.api.deps import Predictor, RuntimeDep
from service.api.json_route import OrjsonRoute
from service.api.schemas import (
    KEY_PATTERN,
    PredictRequest,
    PredictResponse,
    Problem,
    RememberedPredictResponse,
)

router = APIRouter(tags=["prediction"], route_class=OrjsonRoute)


@router.post(
    "/predict/{key}",
    response_model=PredictResponse | RememberedPredictResponse,
    responses={
        404: {"model": Problem},
        413: {"model": Problem},
        422: {"model": Problem},
        503: {"model": Problem},
    },
)
async def predict(
    key: Annotated[str, Path(pattern=KEY_PATTERN)],
    body: PredictRequest,
    runtime: RuntimeDep,
    caller: Predictor,
    remember: Annotated[
        bool,
        Query(description="Also keep each row under a prediction id, for POST /feedback/{key}."),
    ] = False,
) -> PredictResponse | RememberedPredictResponse:
    """Predict classes and probabilities for rows under one context."""
    if remember:
        kept = await runtime.feedback.predict_and_remember(key, body.inputs)
        return RememberedPredictResponse(
            predictions=kept.prediction.probabilities.argmax(axis=1).tolist(),
            probabilities=kept.prediction.probabilities.tolist(),
            model_version=kept.prediction.model_version,
            prediction_ids=kept.prediction_ids,
        )
    result = await runtime.prediction.predict(key, body.inputs)
    return PredictResponse(
        predictions=result.probabilities.argmax(axis=1).tolist(),
        probabilities=result.probabilities.tolist(),
        model_version=result.model_version,
    )
