"""Hypothesis strategies of request parts: keys, rows, bodies valid, broken or junk, and their
encodings (JSON, msgpack, gzip, or bytes that are none of them)."""

from __future__ import annotations

import gzip
import json
from typing import Any

import msgpack
from hypothesis import strategies as st

WIDTH = 8
"""The fuzzed model's input width (small: rows are cheap to generate)."""
CLASSES = 4
MAX_ROWS = 16
"""`PSP_LIMITS__MAX_ROWS` of the fuzzed app, small so that generated bodies cross it."""

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: beyond 64 bits too
    | st.floats()  # NaN and infinities too
    | st.text(max_size=12)
)
JUNK: st.SearchStrategy[Any] = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
"""Any JSON value."""

EDGE_NUMBERS = st.sampled_from(
    [
        float("nan"),
        float("inf"),
        -float("inf"),
        3.5e38,
        -1e308,
        2**63,
        2**64 - 1,
        10**400,
        -(10**400),
    ]
)
CELLS = st.one_of(st.floats(-4, 4), EDGE_NUMBERS, SCALARS, st.lists(st.floats(-1, 1), max_size=2))
"""What one input value may be: mostly a number, sometimes anything but."""

GOOD_KEYS = st.from_regex(r"(t-)?[A-Za-z0-9._:-]{1,10}", fullmatch=True)
KEYS = st.one_of(GOOD_KEYS, GOOD_KEYS, st.text(max_size=12), st.text("aA0-", min_size=129))
PREFIXES = st.one_of(st.just(""), GOOD_KEYS, st.text(max_size=6))


def _rows(count: int, value: float) -> list[list[Any]]:
    return [[value] * WIDTH for _ in range(count)]


def _with_cell(rows: list[list[Any]], row: int, column: int, cell: Any) -> list[list[Any]]:
    rows = [list(r) for r in rows]
    rows[row % len(rows)][column % WIDTH] = cell
    return rows


VALID_ROWS = st.builds(_rows, st.integers(1, 4), st.floats(-3, 3))
ROWS: st.SearchStrategy[Any] = st.one_of(
    VALID_ROWS,
    VALID_ROWS,
    VALID_ROWS,
    VALID_ROWS,
    st.builds(_with_cell, VALID_ROWS, st.integers(0, 3), st.integers(0, WIDTH - 1), CELLS),
    st.builds(lambda rows, extra: [*rows, [0.5] * extra], VALID_ROWS, st.integers(0, 12)),
    st.builds(_rows, st.sampled_from([0, MAX_ROWS + 1]), st.just(0.5)),
    st.lists(st.lists(CELLS, max_size=3), max_size=3),
    JUNK,
)
LABELS = st.one_of(
    st.lists(st.integers(0, CLASSES - 1), min_size=1, max_size=4),
    st.lists(st.one_of(st.integers(), SCALARS), max_size=5),
    JUNK,
)


def _train_body(rows: list[list[float]], label: int) -> dict[str, Any]:
    return {"inputs": rows, "labels": [label] * len(rows)}


VALID_TRAIN = st.builds(_train_body, VALID_ROWS, st.integers(0, CLASSES - 1))
TRAIN_BODIES: st.SearchStrategy[Any] = st.one_of(
    VALID_TRAIN, VALID_TRAIN, st.builds(lambda x, y: {"inputs": x, "labels": y}, ROWS, LABELS)
)


def _broken(body: dict[str, Any]) -> st.SearchStrategy[Any]:
    """`body` with one field dropped, one field replaced by anything, or a field added."""
    fields = sorted(body) or ["x"]
    return st.one_of(
        st.sampled_from(fields).map(lambda f: {k: v for k, v in body.items() if k != f}),
        st.tuples(st.sampled_from(fields), JUNK).map(lambda fv: {**body, fv[0]: fv[1]}),
        st.tuples(st.text(max_size=8), JUNK).map(lambda kv: {**body, kv[0]: kv[1]}),
    )


def bodies(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly `valid` bodies (whose fields may hold broken values themselves), some with a
    field dropped, replaced or added, some anything at all."""
    return st.one_of(valid, valid, valid, valid.flatmap(_broken), JUNK)


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A value to put in an optional field, or `ABSENT` to leave it out."""
    return st.one_of(st.just(ABSENT), strategy)


ABSENT = object()


def fields(**values: Any) -> dict[str, Any]:
    """A body of the fields that are not `ABSENT`."""
    return {name: value for name, value in values.items() if value is not ABSENT}


ENCODINGS = st.sampled_from(
    ["json", "json", "json", "msgpack", "msgpack", "gzip-json", "gzip-msgpack", "bytes"]
)
RAW_BYTES = st.binary(max_size=64)
CONTENT_TYPES = st.sampled_from(
    ["application/json", "application/msgpack", "text/plain", "application/json; charset=latin-1"]
)


def encode(body: Any, encoding: str, raw: bytes = b"") -> tuple[bytes, dict[str, str]]:
    """The bytes and content headers of `body` sent as `encoding`; msgpack falls back to JSON
    for what it cannot pack (integers past 64 bits)."""
    if encoding == "bytes":
        return raw, {"content-type": "application/json"}
    packed = None
    if encoding.endswith("msgpack"):
        try:
            packed = msgpack.packb(body)
        except (OverflowError, TypeError, ValueError):
            packed = None
    if packed is not None:
        content, headers = packed, {"content-type": "application/msgpack"}
    else:
        content, headers = json.dumps(body).encode(), {"content-type": "application/json"}
    if encoding.startswith("gzip"):
        return gzip.compress(content, compresslevel=1), {**headers, "content-encoding": "gzip"}
    return content, headers
