"""Turns JSON request bodies into checked arrays, with errors that say what to send instead."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


class PayloadError(ValueError):
    """A request body that cannot be used; the message is the sentence the client sees."""


class TooManyRows(PayloadError):
    """More rows than one request may carry (answered with 413)."""


def input_matrix(inputs: Sequence[Any], input_shape: Sequence[int], max_rows: int) -> np.ndarray:
    """Checks and flattens the `inputs` of a train or predict body.

    Args:
        inputs: Rows, each a flat list of `prod(input_shape)` numbers or a nested list of
            shape `input_shape`.
        input_shape: The model's shape of one example.
        max_rows: The most rows one request may carry.

    Returns:
        float32 array `(n, prod(input_shape))`.

    Raises:
        PayloadError: Empty, ragged, wrongly shaped, non-numeric or non-finite inputs.
    """
    width = math.prod(input_shape)
    shape_text = "x".join(str(d) for d in input_shape)
    expected = f"send {{'inputs': [[...{width} floats...], ...]}} (or rows nested as {shape_text})"
    if len(inputs) == 0:
        raise PayloadError(f"inputs is empty; {expected} with at least one row")
    if len(inputs) > max_rows:
        raise TooManyRows(
            f"inputs has {len(inputs)} rows, more than the limit of {max_rows}; "
            f"split it into requests of at most {max_rows} rows"
        )
    try:
        array = np.asarray(inputs, dtype=np.float64)
    except (ValueError, TypeError):
        raise PayloadError(
            f"inputs must be a rectangular array of numbers; some rows differ in length or hold "
            f"non-numbers; {expected}"
        ) from None
    row_shape = array.shape[1:]
    if row_shape != (width,) and row_shape != tuple(input_shape):
        shapes = " or ".join(dict.fromkeys(f"{list(s)}" for s in [(width,), tuple(input_shape)]))
        raise PayloadError(
            f"each input row must have shape {shapes}, got {list(row_shape)}; {expected}"
        )
    if not np.isfinite(array).all():
        bad = int(np.argwhere(~np.isfinite(array.reshape(len(array), -1)))[0][0])
        raise PayloadError(f"inputs row {bad} holds NaN or Infinity; send finite numbers only")
    if np.abs(array).max(initial=0.0) > np.finfo(np.float32).max:
        raise PayloadError("inputs hold numbers too large for float32; send values below 3.4e38")
    return array.reshape(len(array), width).astype(np.float32)


def label_vector(labels: Sequence[Any], rows: int, num_classes: int) -> np.ndarray:
    """Checks the `labels` of a train body against the number of rows and classes.

    Returns:
        int64 array `(rows,)`.

    Raises:
        PayloadError: Wrong length, non-integers, or labels outside `[0, num_classes)`.
    """
    if len(labels) != rows:
        raise PayloadError(
            f"labels has {len(labels)} entries but inputs has {rows} rows; send one label per row"
        )
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
        raise PayloadError(f"labels must be integers in [0, {num_classes}); send class indices")
    vector = np.asarray(labels, dtype=np.int64)
    out_of_range = (vector < 0) | (vector >= num_classes)
    if out_of_range.any():
        bad = int(np.argmax(out_of_range))
        raise PayloadError(
            f"label {int(vector[bad])} at position {bad} is out of range; "
            f"send class indices in [0, {num_classes})"
        )
    return vector
