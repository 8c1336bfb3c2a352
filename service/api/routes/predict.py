"""Prediction: class probabilities from one context's model."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from service.api.deps import Predictor, RuntimeDep, check_key_lengths
from service.api.json_route import OrjsonRoute
from service.api.schemas import (
    KEY_PATTERN,
    MultiPredictRequest,
    MultiPredictResponse,
    PredictItemOut,
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


@router.post(
    "/predict",
    responses={
        404: {"model": Problem},
        413: {"model": Problem},
        422: {"model": Problem},
        503: {"model": Problem},
    },
)
async def predict_many(
    body: MultiPredictRequest, runtime: RuntimeDep, caller: Predictor
) -> MultiPredictResponse:
    """Predict for many contexts at once; all rows share one forward pass."""
    keys = [item.context for item in body.items]
    check_key_lengths(runtime, keys)
    caller.require("predict", keys)
    answers, version = await runtime.multi_prediction.predict(
        [(item.context, item.inputs) for item in body.items]
    )
    return MultiPredictResponse(
        items=[
            PredictItemOut(
                context=answer.context,
                predictions=answer.probabilities.argmax(axis=1).tolist(),
                probabilities=answer.probabilities.tolist(),
            )
            for answer in answers
        ],
        model_version=version,
    )
