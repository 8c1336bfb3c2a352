"""The requests of benchmarks/adversarial.py: bodies that cost far more to parse than to send,
well-formed JSON that breaks a rule, and the largest valid requests, for comparison."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from typing import Any

import msgpack

JSON = {"content-type": "application/json"}
MSGPACK = {"content-type": "application/msgpack"}
BODY_BYTES = 16 * 1024 * 1024 - 64
"""Just under the default body limit (`PSP_LIMITS__MAX_BODY_BYTES`, 16 MiB)."""
ROWS, WIDTH = 4096, 64
"""The default row limit and model width."""
HUGE = "1" + "0" * 400


@dataclass
class Case:
    """One adversarial request: its route, body and headers; `keyed` sends the admin key."""

    name: str
    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))
    keyed: bool = True
    reference: bool = False  # a valid request, for comparison; outside the targets


def _empties(opening: bytes, count: int) -> bytes:
    return b'{"inputs": [' + (opening + b",") * (count - 1) + opening + b"]}"


def _msgpack_empties(count: int) -> bytes:
    header = b"\x81" + msgpack.packb("inputs") + b"\xdd" + count.to_bytes(4, "big")
    return header + b"\x90" * count


def _row(value: str) -> str:
    return "[" + ",".join(["0.5"] * (WIDTH - 1) + [value]) + "]"


def _tensor(**fields: Any) -> dict[str, Any]:
    rows = fields.pop("rows", 1)
    return {"name": "INPUT", "shape": [rows, WIDTH], "datatype": "FP32", **fields}


def cases() -> list[Case]:
    """Every case, its body built once, before the clock starts."""
    full_rows = [[0.123456] * WIDTH for _ in range(ROWS)]
    return [*_bomb_cases(), *_malformed_cases(full_rows), *_reference_cases(full_rows)]


def _bomb_cases() -> list[Case]:
    """Bodies that cost the server far more to parse than to send: millions of empty lists or
    objects, deep nesting, 16 MB of whitespace or of one string."""
    json_bomb = _empties(b"[]", BODY_BYTES // 3)
    msgpack_bomb = _msgpack_empties(BODY_BYTES - 16)
    gzip_json = {**JSON, "content-encoding": "gzip"}
    gzip_msgpack = {**MSGPACK, "content-encoding": "gzip"}
    return [
        Case("json-bomb-no-key", "/predict/a", json_bomb, keyed=False),
        Case("msgpack-bomb-no-key", "/train/a", msgpack_bomb, MSGPACK, keyed=False),
        Case("gzip-json-bomb-no-key", "/predict/a", gzip.compress(json_bomb), gzip_json, False),
        Case("json-bomb", "/predict/a", json_bomb),
        Case("json-objects-bomb", "/predict", _empties(b"{}", BODY_BYTES // 3)),
        Case("gzip-json-bomb", "/train/a", gzip.compress(json_bomb), gzip_json),
        Case("msgpack-bomb", "/train/a", msgpack_bomb, MSGPACK),
        Case("gzip-msgpack-bomb", "/predict/a", gzip.compress(msgpack_bomb), gzip_msgpack),
        Case("infer-json-bomb", "/v2/models/a/infer", json_bomb),
        Case("deep-nesting", "/predict/a", b"[" * BODY_BYTES),
        Case("16MB-whitespace", "/predict/a", b'{"inputs": ' + b" " * BODY_BYTES + b"[]}"),
        Case("16MB-string", "/predict/a", b'{"inputs": "' + b"x" * BODY_BYTES + b'"}'),
    ]


def _malformed_cases(full_rows: list[list[float]]) -> list[Case]:
    """Well-formed JSON that breaks a rule: repeated ids, 400-digit numbers, malformed Open
    Inference Protocol requests, lists over their caps."""
    repeated = {"prediction_ids": ["p0.0.0000000000000000"] * 30_000, "labels": [0] * 30_000}
    at_cap = {"prediction_ids": ["p0.0.0000000000000000"] * ROWS, "labels": [0] * ROWS}
    infer_path = "/v2/models/a/infer"
    one_row = _tensor(data=[0.5] * WIDTH)
    return [
        Case("feedback-30k-repeats", "/feedback/a", json.dumps(repeated).encode()),
        Case("feedback-4096-repeats", "/feedback/a", json.dumps(at_cap).encode()),
        Case("400-digit-input", "/predict/a", f'{{"inputs": [{_row(HUGE)}]}}'.encode()),
        Case(
            "400-digit-label",
            "/train/a",
            f'{{"inputs": [{_row("0")}], "labels": [{HUGE}]}}'.encode(),
        ),
        Case(
            "infer-parameters-list",
            infer_path,
            json.dumps({"inputs": [{**one_row, "parameters": [1]}]}).encode(),
        ),
        Case(
            "infer-output-name-list",
            infer_path,
            json.dumps({"inputs": [one_row], "outputs": [{"name": ["x"]}]}).encode(),
        ),
        Case(
            "infer-rows-over-cap",
            infer_path,
            json.dumps({"inputs": [_tensor(rows=10**9, data=[0.5] * WIDTH)]}).encode(),
        ),
        Case(
            "multi-predict-rows-over-cap",
            "/predict",
            json.dumps({"items": [{"context": "a", "inputs": full_rows[:5]}] * 1000}).encode(),
        ),
        Case(
            "contexts-batch-10001",
            "/contexts:batch",
            json.dumps({"contexts": [{"key": f"k{i}"} for i in range(10_001)]}).encode(),
        ),
    ]


def _reference_cases(full_rows: list[list[float]]) -> list[Case]:
    """The largest valid train, predict, multi-predict and infer requests, for comparison."""
    train = {"inputs": full_rows, "labels": [1] * ROWS}
    predict = {"inputs": full_rows}
    items = {"items": [{"context": "a", "inputs": full_rows[:4]} for _ in range(1000)]}
    infer = {"inputs": [_tensor(rows=ROWS, data=[0.5] * ROWS * WIDTH)]}
    return [
        Case("largest-train", "/train/a", json.dumps(train).encode(), reference=True),
        Case("largest-predict", "/predict/a", json.dumps(predict).encode(), reference=True),
        Case("largest-multi-predict", "/predict", json.dumps(items).encode(), reference=True),
        Case("largest-infer", "/v2/models/a/infer", json.dumps(infer).encode(), reference=True),
    ]
