"""Decoding Open Inference Protocol (KServe v2) infer requests, JSON or binary-extension bodies.

A binary body is a JSON header of `Inference-Header-Content-Length` bytes followed by the raw
little-endian tensors of the inputs that declare `parameters.binary_data_size`.

Everything is checked before the tensor's data is touched: the header's value count, its
fields' types, one FP32 input, its rows against `PSP_LIMITS__MAX_ROWS` and its width against
the model's.
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, StrictInt, StrictStr, ValidationError

from service.api.body_budget import check_json_budget, decode_json, json_values, needs_counting
from service.api.payloads import PayloadError, TooManyRows, numbers

EXAMPLE = (
    'send {"inputs": [{"name": "INPUT", "shape": [n, width], "datatype": "FP32", "data": [...]}]}'
)
OutputName = Literal["PROBABILITIES", "PREDICTIONS"]
OUTPUT_NAMES: tuple[OutputName, ...] = ("PROBABILITIES", "PREDICTIONS")


class RequestedOutput(BaseModel):
    name: OutputName
    parameters: dict[str, Any] | None = None


class InputTensor(BaseModel):
    name: StrictStr
    shape: list[StrictInt]
    datatype: StrictStr
    parameters: dict[str, Any] | None = None
    data: Any = None  # checked once the shape is known to fit


class InferRequest(BaseModel):
    """The JSON part of an infer request, as the protocol defines its fields."""

    id: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None = None


@dataclass(frozen=True)
class DecodedInfer:
    """The input rows `(n, width)` float64, the outputs asked for (in the protocol's order when
    none are named) and the request id to echo."""

    rows: np.ndarray
    outputs: list[OutputName]
    request_id: str | None


@dataclass(frozen=True)
class InferLimits:
    """What an infer request may hold: value budget of its JSON, rows, and the model's width."""

    max_values: int
    max_rows: int
    width: int


async def decode_infer_request(
    body: bytes, header_length: int | None, limits: InferLimits
) -> DecodedInfer:
    """The one FP32 input tensor, the outputs asked for and the request id.

    Raises:
        TooManyValues, TooManyRows: Over the value budget or the row limit (413).
        PayloadError: Not JSON, fields of the wrong type, not exactly one FP32 input, or data
            that does not fit its shape and the model.
    """
    head, tail = (body[:header_length], body[header_length:]) if header_length else (body, b"")
    if needs_counting(head, limits.max_values):
        # NumPy counts without the interpreter, so the event loop runs on meanwhile.
        counted = await asyncio.to_thread(json_values, head, limits.max_values)
        check_json_budget(counted, limits.max_values)
    try:
        request = InferRequest.model_validate(decode_json(head))
    except (json.JSONDecodeError, ValueError) as error:
        raise PayloadError(f"the infer request {_explain(error)}; {EXAMPLE}") from None
    if len(request.inputs) != 1:
        raise PayloadError(f"the infer request must hold exactly one input tensor; {EXAMPLE}")
    tensor = request.inputs[0]
    rows = _rows(tensor, tail, limits)
    outputs = [output.name for output in request.outputs or []] or list(OUTPUT_NAMES)
    return DecodedInfer(rows, list(dict.fromkeys(outputs)), request.id)


def _explain(error: Exception) -> str:
    """What is wrong with the header, in words: its JSON, or its first invalid field."""
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        return f"field {where}: {first['msg']}"
    if isinstance(error, json.JSONDecodeError):
        return f"is not valid JSON ({error.msg})"
    return f"is not valid JSON ({error})"


def _rows(tensor: InputTensor, tail: bytes, limits: InferLimits) -> np.ndarray:
    """The tensor as `(rows, width)` float64, its shape checked before its data."""
    if tensor.datatype != "FP32":
        raise PayloadError(f"the input tensor's datatype must be FP32; {EXAMPLE}")
    shape = tensor.shape
    if len(shape) < 2 or not all(d > 0 for d in shape):
        raise PayloadError(
            f"the input tensor's shape must be [rows, ...] of positive integers; {EXAMPLE}"
        )
    if shape[0] > limits.max_rows:
        raise TooManyRows(
            f"the input tensor has {shape[0]} rows; send at most {limits.max_rows} rows per request"
        )
    if math.prod(shape[1:]) != limits.width:
        raise PayloadError(
            f"the input tensor's shape {shape} does not fit the model: each row must hold "
            f"{limits.width} values; send shape [rows, {limits.width}]"
        )
    count = shape[0] * limits.width
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is not None:
        values = _binary(size, count, tail)
    else:
        values = numbers(tensor.data, f"the input tensor's data must be numbers; {EXAMPLE}")
        values = values.reshape(-1)
    if values.size != count:
        raise PayloadError(
            f"the input tensor holds {values.size} values but its shape {shape} needs {count}; "
            "send data matching the shape"
        )
    return values.reshape(shape[0], limits.width)  # prediction checks the values themselves


def _binary(size: Any, count: int, tail: bytes) -> np.ndarray:
    """The FP32 values of the binary extension: `size` bytes after the JSON header."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise PayloadError(
            "the input tensor's parameters.binary_data_size must be a byte count; send the "
            "number of bytes of its raw FP32 data"
        )
    if size != 4 * count or len(tail) < size:
        raise PayloadError(
            f"the binary input holds {min(size, len(tail))} bytes but its shape needs "
            f"{4 * count}; send 4 bytes per FP32 value"
        )
    return np.frombuffer(tail[:size], dtype="<f4").astype(np.float64)
