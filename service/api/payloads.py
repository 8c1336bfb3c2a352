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
    if len(inputs) == 0:
        raise PayloadError(f"inputs is empty; {_expected(input_shape)} with at least one row")
    if len(inputs) > max_rows:
        raise TooManyRows(
            f"inputs has {len(inputs)} rows, more than the limit of {max_rows}; "
            f"split it into requests of at most {max_rows} rows"
        )
    try:
        array = numbers(inputs, _NOT_RECTANGULAR)
    except PayloadError as error:
        if str(error) == _NOT_RECTANGULAR:
            raise PayloadError(f"{_NOT_RECTANGULAR}; {_expected(input_shape)}") from None
        raise
    row_shape = array.shape[1:]
    if row_shape != (width,) and row_shape != tuple(input_shape):
        shapes = " or ".join(dict.fromkeys(f"{list(s)}" for s in [(width,), tuple(input_shape)]))
        raise PayloadError(
            f"each input row must have shape {shapes}, got {list(row_shape)}; "
            f"{_expected(input_shape)}"
        )
    matrix = array.reshape(len(array), width).astype(np.float32)
    # One check on the predict path's rows; which problem it was is worked out only on failure.
    if not np.isfinite(matrix).all():
        if np.isfinite(array).all():  # finite, yet infinite once float32
            raise PayloadError(
                "inputs hold numbers too large for float32; send values below 3.4e38"
            )
        bad = int(np.argwhere(~np.isfinite(array.reshape(len(array), -1)))[0][0])
        raise PayloadError(f"inputs row {bad} holds NaN or Infinity; send finite numbers only")
    return matrix


_NOT_RECTANGULAR = (
    "inputs must be a rectangular array of numbers; some rows differ in length or hold non-numbers"
)


def _expected(input_shape: Sequence[int]) -> str:
    """What to send: built only for an answer that refuses the rows, off the predict path."""
    shape_text = "x".join(str(d) for d in input_shape)
    width = math.prod(input_shape)
    return f"send {{'inputs': [[...{width} floats...], ...]}} (or rows nested as {shape_text})"


_NUMBER_KINDS = "iuf"
"""NumPy's kinds of signed and unsigned integers and of floats; strings, booleans and objects
are not numbers to learn from."""


def numbers(values: Any, not_numbers: str) -> np.ndarray:
    """`values` (nested lists) as a float64 array, once NumPy has found them all numbers.

    Raises:
        PayloadError: `not_numbers` for ragged lists or non-numbers; a sentence of its own for
            integers beyond every number type.
    """
    try:
        array = np.asarray(values)
    except (ValueError, TypeError):
        raise PayloadError(not_numbers) from None
    if array.dtype.kind in _NUMBER_KINDS:
        return array.astype(np.float64, copy=False)
    if array.dtype.kind == "O" and any(_is_integer(v) for v in array.flat):
        # Integers past 64 bits (valid JSON, and msgpack's past 64 bits) stay Python objects.
        raise PayloadError("inputs hold numbers too large for float32; send values below 3.4e38")
    raise PayloadError(not_numbers)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
    if not all(_is_integer(v) for v in labels):
        raise PayloadError(f"labels must be integers in [0, {num_classes}); send class indices")
    # Checked before NumPy sees them: an integer past 64 bits would overflow its int64.
    bad = next((i for i, v in enumerate(labels) if not 0 <= v < num_classes), None)
    if bad is not None:
        shown = str(labels[bad]) if len(str(labels[bad])) <= 20 else f"{str(labels[bad])[:12]}..."
        raise PayloadError(
            f"label {shown} at position {bad} is out of range; "
            f"send class indices in [0, {num_classes})"
        )
    return np.asarray(labels, dtype=np.int64)
