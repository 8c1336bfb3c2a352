"""Decoding Open Inference Protocol (KServe v2) infer requests, JSON or binary-extension bodies.

A binary body is a JSON header of `Inference-Header-Content-Length` bytes followed by the raw
little-endian tensors of the inputs that declare `parameters.binary_data_size`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson

from service.payloads import PayloadError

EXAMPLE = (
    'send {"inputs": [{"name": "INPUT", "shape": [n, width], "datatype": "FP32", "data": [...]}]}'
)


def decode_infer_request(
    body: bytes, header_length: int | None
) -> tuple[np.ndarray, dict[str, Any]]:
    """The one FP32 input tensor as `(n, width)` float32, and the request's JSON header.

    Raises:
        PayloadError: Not JSON, not exactly one FP32 input, or data that does not fit its shape.
    """
    head, tail = (body[:header_length], body[header_length:]) if header_length else (body, b"")
    try:
        request = orjson.loads(head)
    except orjson.JSONDecodeError:
        raise PayloadError(f"the infer request is not valid JSON; {EXAMPLE}") from None
    inputs = request.get("inputs") if isinstance(request, dict) else None
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise PayloadError(f"the infer request must hold exactly one input tensor; {EXAMPLE}")
    tensor = inputs[0]
    if tensor.get("datatype") != "FP32":
        raise PayloadError(f"the input tensor's datatype must be FP32; {EXAMPLE}")
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) < 2
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        raise PayloadError(
            f"the input tensor's shape must be [rows, ...] of positive integers; {EXAMPLE}"
        )
    count = math.prod(shape)
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if size != 4 * count or len(tail) < size:
            raise PayloadError(
                f"the binary input holds {len(tail)} bytes but shape {shape} needs {4 * count}; "
                "send 4 bytes per FP32 value"
            )
        values = np.frombuffer(tail[:size], dtype="<f4")
    else:
        try:
            values = np.asarray(tensor.get("data"), dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise PayloadError(f"the input tensor's data must be numbers; {EXAMPLE}") from None
        if values.size != count:
            raise PayloadError(
                f"the input tensor holds {values.size} values but its shape {shape} needs {count}; "
                "send data matching the shape"
            )
    return values.reshape(shape[0], -1), request
