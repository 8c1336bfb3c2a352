"""The Open Inference Protocol (KServe v2, as spoken by Triton's and KServe's clients).

Each context is a model named by its key; its one input is an FP32 tensor `[rows, width]`,
its outputs are `PROBABILITIES` (FP32 `[rows, classes]`) and `PREDICTIONS` (INT64 `[rows]`).
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse

from service.api.deps import KeyPath, Predictor, Reader, RuntimeDep
from service.api.json_route import read_body
from service.api.schemas import problems
from service.api.v2_decoding import InferLimits, InferRequest, decode_infer_request

router = APIRouter(prefix="/v2", tags=["open inference protocol"])
ModelName = KeyPath  # each context is a model, named by its key
ERRORS = problems(404, 503)


@router.get("/health/live")
async def live() -> dict[str, bool]:
    """200 while the process lives."""
    return {"live": True}


@router.get("/health/ready", responses={503: {"description": "The model is being restored."}})
async def ready(runtime: RuntimeDep) -> JSONResponse:
    """200 while every shard's model can answer inference requests."""
    healthy = all(shard.host.healthy for shard in runtime.shards)
    return JSONResponse({"ready": healthy}, status_code=200 if healthy else 503)


@router.get("/models/{key}", responses=ERRORS)
async def model_metadata(key: ModelName, runtime: RuntimeDep, caller: Reader) -> dict[str, Any]:
    """A context's model: its name, version, and input and output tensors."""
    host = runtime.host_of(await runtime.contexts.resolve(key))
    model = runtime.settings.model
    width = math.prod(model.input_shape)
    return {
        "name": key,
        "versions": [str(host.model_version)],
        "platform": "psp-superposition",
        "inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [-1, width]}],
        "outputs": [
            {"name": "PROBABILITIES", "datatype": "FP32", "shape": [-1, model.num_classes]},
            {"name": "PREDICTIONS", "datatype": "INT64", "shape": [-1]},
        ],
    }


@router.get("/models/{key}/ready", responses=ERRORS)
async def model_ready(key: ModelName, runtime: RuntimeDep, caller: Reader) -> JSONResponse:
    """200 when the context exists and the model can answer."""
    healthy = runtime.host_of(await runtime.contexts.resolve(key)).healthy
    return JSONResponse({"name": key, "ready": healthy}, status_code=200 if healthy else 503)


@router.post(
    "/models/{key}/infer",
    responses=problems(404, 503, 413, 422),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": InferRequest.model_json_schema()}},
        }
    },
)
async def infer(
    key: ModelName,
    request: Request,
    runtime: RuntimeDep,
    caller: Predictor,
    inference_header_content_length: Annotated[int | None, Header(ge=0)] = None,
) -> JSONResponse:
    """Run the FP32 input tensor through the context's model; outputs are JSON tensors."""
    settings = runtime.settings
    limits = InferLimits(
        max_values=request.app.state.body_limits.max_values,
        max_rows=settings.limits.max_rows,
        width=math.prod(settings.model.input_shape),
    )
    decoded = await decode_infer_request(
        await read_body(request), inference_header_content_length, limits
    )
    result = await runtime.prediction.predict(key, list(decoded.rows))
    probabilities = result.probabilities
    tensors = {
        "PROBABILITIES": {
            "name": "PROBABILITIES",
            "datatype": "FP32",
            "shape": list(probabilities.shape),
            "data": probabilities.reshape(-1).tolist(),
        },
        "PREDICTIONS": {
            "name": "PREDICTIONS",
            "datatype": "INT64",
            "shape": [len(probabilities)],
            "data": probabilities.argmax(axis=1).tolist(),
        },
    }
    answer: dict[str, Any] = {
        "model_name": key,
        "model_version": str(result.model_version),
        "outputs": [tensors[name] for name in decoded.outputs],
    }
    if decoded.request_id is not None:
        answer["id"] = decoded.request_id
    return JSONResponse(answer)
