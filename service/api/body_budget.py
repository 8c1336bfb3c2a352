"""How many values a request body may make when it is decoded, and the decoders that keep to it.

A body within the size limit can still hold millions of values: 16 MB of JSON is five million
empty lists (`[],`), and msgpack spends one byte on each. Decoded, they would cost hundreds of
megabytes and seconds of the event loop before any check saw them. So a JSON body is counted
before it is parsed, and a msgpack body while it is decoded, against a budget: the most values
that a valid request can hold (`PSP_LIMITS__MAX_ROWS` rows of the model's inputs and labels,
or the largest batch of contexts to register). Beyond it the body is refused with 413 and never
decoded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import msgpack
import numpy as np
import orjson

from service.api.payloads import PayloadError

MOST_LISTED_ITEMS = 10_000
"""The longest list of objects a body carries: contexts of `POST /contexts:batch` (10,000)
or items of `POST /predict` (1,000)."""

VALUES_PER_LISTED_ITEM = 8
"""Values one such object holds, with room to spare: `{"key": ..., "seed": ..., "power": ...}`."""

SLACK = 1024
"""Room for the fields around the rows: ids, names, shapes, parameters."""

STANDARD_PARSE_BYTES = 64 * 1024
"""Bodies up to this size that orjson refuses are parsed again by Python's `json`, which reads
NaN, Infinity and integers of any size, so that validation can name the exact problem. Larger
ones are not: Python's parser holds the event loop about twice as long as orjson."""

_SEPARATORS = np.frombuffer(b",[{", dtype=np.uint8)


class TooManyValues(PayloadError):
    """A body that holds more values than any valid request (answered with 413)."""


def value_budget(max_rows: int, input_shape: Sequence[int]) -> int:
    """The most values a valid body holds: `max_rows` rows (their numbers, the lists that nest
    them and their labels), or the longest list of objects, and some slack."""
    width = math.prod(input_shape)
    lists_per_row = 1 + sum(math.prod(input_shape[:depth]) for depth in range(1, len(input_shape)))
    rows = max_rows * (width + lists_per_row + 1)
    return rows + MOST_LISTED_ITEMS * VALUES_PER_LISTED_ITEM + SLACK


def _over_budget(counted: int, budget: int) -> TooManyValues:
    return TooManyValues(
        f"the request body holds more than {budget} values ({counted} or more), more than any "
        "valid request; split it into smaller requests"
    )


COUNTED_CHUNK_BYTES = 1 << 20
"""JSON bodies are counted a megabyte at a time: the temporaries stay small, and a body far
over the budget is refused after its first megabytes."""


def json_values(body: bytes, budget: int) -> int:
    """An upper bound on the values of a JSON body, counted until it passes `budget`: every
    value but the first follows a comma or opens a list or an object. NumPy counts, and leaves
    the interpreter free meanwhile (run it in a thread)."""
    octets = np.frombuffer(body, dtype=np.uint8)
    counted = 1
    for start in range(0, len(octets), COUNTED_CHUNK_BYTES):
        chunk = octets[start : start + COUNTED_CHUNK_BYTES]
        counted += sum(int(np.count_nonzero(chunk == separator)) for separator in _SEPARATORS)
        if counted > budget:
            break
    return counted


def check_json_budget(counted: int, budget: int) -> None:
    """Raises TooManyValues when `counted` (from `json_values`) exceeds `budget`."""
    if counted > budget:
        raise _over_budget(counted, budget)


def needs_counting(body: bytes, budget: int) -> bool:
    """Every JSON value takes at least one byte: a body no longer than the budget is within it."""
    return len(body) > budget


def decode_json(body: bytes) -> Any:
    """A JSON body, parsed by orjson; a small body orjson refuses is parsed again by Python's
    `json` (NaN, Infinity and integers beyond 64 bits reach validation, which names them).

    Raises:
        json.JSONDecodeError: Not JSON, or beyond orjson and too large to parse again.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        if len(body) > STANDARD_PARSE_BYTES:
            raise json.JSONDecodeError(
                f"the body is over {STANDARD_PARSE_BYTES // 1024} KB and not standard JSON "
                f"with finite numbers and integers of at most 64 bits ({error.msg})",
                error.doc,
                error.pos,
            ) from None
    try:
        return json.loads(bytes(body))  # a large body's part may be a memoryview
    except RecursionError:
        raise json.JSONDecodeError("the body nests too deeply", "", 0) from None


class _MsgpackCounter:
    """The hooks of a msgpack decode that count the values of every list and map decoded so
    far, and stop the decode once they exceed the budget."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.counted = 0

    def _add(self, values: int) -> None:
        self.counted += values
        if self.counted > self.budget:
            raise _over_budget(self.counted, self.budget)

    def list_hook(self, decoded: list[Any]) -> list[Any]:
        self._add(1 + len(decoded))
        return decoded

    def object_hook(self, decoded: dict[str, Any]) -> dict[str, Any]:
        self._add(1 + 2 * len(decoded))
        return decoded


def decode_msgpack(body: bytes, budget: int) -> Any:
    """A msgpack body, decoded as long as it stays within `budget` values.

    No single list or map may hold more than the budget either, so the values made before the
    decode stops are at most twice the budget.

    Raises:
        TooManyValues: The body holds more than `budget` values.
        json.JSONDecodeError: Not msgpack (FastAPI answers it as a malformed body).
    """
    counter = _MsgpackCounter(budget)
    try:
        return msgpack.unpackb(
            body,
            list_hook=counter.list_hook,
            object_hook=counter.object_hook,
            max_array_len=budget,
            max_map_len=budget,
            max_ext_len=0,
        )
    except TooManyValues:
        raise
    except ValueError as error:  # msgpack's own errors (ExtraData, FormatError, ...) among them
        if "exceeds max_" in str(error):  # one list or map longer than the budget
            raise _over_budget(budget + 1, budget) from None
        raise json.JSONDecodeError("the body is not valid msgpack", "", 0) from None
