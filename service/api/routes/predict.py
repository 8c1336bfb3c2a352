"""Prediction: class probabilities from one context's model."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.api.deps import KeyPath, Predictor, RuntimeDep, check_context_keys
from service.api.json_route import BoundedBodyRoute
from service.api.schemas import (
    MultiPredictRequest,
    MultiPredictResponse,
    PredictItemOut,
    PredictRequest,
    PredictResponse,
    RememberedPredictResponse,
    problems,
)
from service.serving.prediction import Prediction

router = APIRouter(tags=["prediction"], route_class=BoundedBodyRoute)
ERRORS = problems(404, 413, 422, 503)


@router.post(
    "/predict/{key}",
    response_model=PredictResponse | RememberedPredictResponse,
    responses=ERRORS,
    response_model_exclude_none=True,
)
async def predict(
    key: KeyPath,
    body: PredictRequest,
    runtime: RuntimeDep,
    caller: Predictor,
    remember: Annotated[
        bool,
        Query(description="Also keep each row under a prediction id, for POST /feedback/{key}."),
    ] = False,
    probabilities: Annotated[
        bool, Query(description="false leaves every probability out of the answer")
    ] = True,
    top_k: Annotated[
        int | None,
        Query(ge=1, description="answer each row's N most probable classes instead of all"),
    ] = None,
) -> PredictResponse | RememberedPredictResponse:
    """Predict classes and probabilities for rows under one context."""
    if remember:
        kept = await runtime.feedback.predict_and_remember(key, body.inputs, top_k=top_k)
        answer = _answer(kept.prediction, probabilities=probabilities, top_k=top_k)
        return RememberedPredictResponse(**answer.model_dump(), prediction_ids=kept.prediction_ids)
    result = await runtime.prediction.predict(key, body.inputs, top_k=top_k)
    return _answer(result, probabilities=probabilities, top_k=top_k)


def _answer(result: Prediction, *, probabilities: bool, top_k: int | None) -> PredictResponse:
    """The answer's fields that `?probabilities=` and `?top_k=` ask for."""
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


@router.post("/predict", responses=ERRORS)
async def predict_many(
    body: MultiPredictRequest, runtime: RuntimeDep, caller: Predictor
) -> MultiPredictResponse:
    """Predict for many contexts at once; the rows of each shard share one forward pass."""
    check_context_keys(runtime, caller, "predict", [item.context for item in body.items])
    answers = await runtime.multi_prediction.predict(
        [(item.context, item.inputs) for item in body.items]
    )
    return MultiPredictResponse(
        items=[
            PredictItemOut(
                context=answer.context,
                predictions=answer.probabilities.argmax(axis=1).tolist(),
                probabilities=answer.probabilities.tolist(),
                model_version=answer.model_version,
            )
            for answer in answers
        ],
        model_version=answers[0].model_version,
    )
