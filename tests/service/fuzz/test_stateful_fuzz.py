"""A stateful fuzz of every route: Hypothesis registers contexts, trains, predicts (remembering
rows), labels them, reads, rolls back and deletes, in any order. Each step is either well formed
(JSON, msgpack or gzip, every optional field and parameter drawn) or hostile: a body broken or
junk, bytes that are no encoding at all, parameters and headers of any value, any kind of key.

`Sender` checks every answer: below 500; each error `{"detail": "<sentence>"}` that adds no
context and queues nothing. One run sends at least `MIN_REQUESTS` generated requests; the
count is printed at the end of the session (`tests/service/fuzz/conftest.py`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, multiple, rule
from hypothesis.stateful import run_state_machine_as_test as run_machine

from service.app import create_app
from service.settings import Settings
from tests.service.fuzz.sender import KEY_SPECS, Sender
from tests.service.fuzz.strategies import (
    ABSENT,
    CLASSES,
    CONTENT_TYPES,
    ENCODINGS,
    GOOD_KEYS,
    JUNK,
    KEYS,
    LABELS,
    MAX_ROWS,
    PREFIXES,
    RAW_BYTES,
    ROWS,
    TRAIN_BODIES,
    VALID_ROWS,
    WIDTH,
    bodies,
    encode,
    fields,
    optional,
)
from tests.service.fuzz.tally import TALLY

MIN_REQUESTS = int(os.environ.get("PSP_FUZZ_MIN_REQUESTS", "5000"))

CALLER = st.sampled_from(["admin"] * 4 + ["tenant", "reader", "none", "wrong"])
FLAG = st.sampled_from(["true", "false"])
FLAGS = st.one_of(FLAG, FLAG, st.text(max_size=5))
INTEGERS = st.one_of(st.integers(-2, 12), st.integers(), st.text(max_size=5))
HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=6)
HEADER_INTEGERS = st.one_of(st.integers(-2, 400), st.integers(), HEADER_TEXT)
FRESH_TOKENS = st.from_regex(r"[a-z0-9]{12}", fullmatch=True)
IDEMPOTENCY_KEYS = st.one_of(FRESH_TOKENS, st.sampled_from(["replayed-1", "replayed-2"]))
WELL_ENCODED = st.sampled_from(["json", "msgpack", "gzip-json", "gzip-msgpack"])
FLAT_DATA = st.builds(lambda rows: [v for row in rows for v in row], VALID_ROWS)
GET_PATHS = [
    "/contexts",
    "/model",
    "/model/dead-letters",
    "/readyz",
    "/healthz",
    "/v2/health/ready",
]
ANY_PATHS = [
    *("/contexts", "/contexts:batch", "/predict", "/predict/a", "/train/a", "/feedback/a"),
    *("/model/rollback", "/v2/models/a/infer", "/contexts/a", "/nowhere"),
]


@pytest.fixture(scope="module")
def live() -> Iterator[TestClient]:
    app = create_app(
        Settings(
            data_dir=Path(tempfile.mkdtemp(prefix="psp-stateful-fuzz-")),
            device="cpu",
            model={"kind": "binary", "input_shape": [WIDTH], "hidden": [8], "num_classes": CLASSES},
            limits={"max_rows": MAX_ROWS, "max_body_bytes": 64 * 1024, "wait_seconds": 5},
            api_keys=KEY_SPECS,
            # The steps in a thread: the routes under fuzz are the same, without a child process.
            training={"steps_in": "thread"},
        )
    )
    with TestClient(app) as client:
        yield client


def _path(template: str, key: str) -> str:
    return template.format(quote(key, safe=""))


def _tensor(shape: Any, data: Any) -> dict[str, Any]:
    return {"name": "INPUT", "datatype": "FP32", "shape": shape, "data": data}


def _owner(key: str) -> str:
    """A caller allowed to use `key`: the tenant's key for its prefix, else the admin key."""
    return "tenant" if key.startswith("t-") else "admin"


class Journey(RuleBasedStateMachine):
    """Tenants' requests, well formed or not, in any order."""

    contexts = Bundle("contexts")
    predictions = Bundle("predictions")
    ANY_KEY = st.one_of(contexts, contexts, KEYS)

    def __init__(self, client: TestClient) -> None:
        super().__init__()
        self.api = Sender(client)

    @initialize(target=contexts)
    def known_contexts(self):  # type: ignore[no-untyped-def]
        """Two contexts every journey starts with, one inside the tenant key's prefix."""
        for key in ("a", "t-a"):
            self.api.send("POST", "/contexts", body={"key": key})
        return multiple("a", "t-a")

    # The journey, well formed -----------------------------------------------------------------

    @rule(
        target=contexts,
        key=GOOD_KEYS,
        seed=optional(st.integers(0, 2**63 - 1)),
        encoding=WELL_ENCODED,
    )
    def register(self, key, seed, encoding):  # type: ignore[no-untyped-def]
        self.api.send("POST", "/contexts", body=fields(key=key, seed=seed), encoding=encoding)
        # Kept whatever the answer (a seed in use is a 409): what a bundle holds may depend only
        # on what Hypothesis drew, or its replays go astray.
        return key

    @rule(
        key=contexts,
        body=st.builds(
            lambda rows, label: {"inputs": rows, "labels": [label] * len(rows)},
            VALID_ROWS,
            st.integers(0, CLASSES - 1),
        ),
        encoding=WELL_ENCODED,
        wait=optional(FLAG),
        idempotency=optional(IDEMPOTENCY_KEYS),
    )
    def train(self, key, body, encoding, wait, idempotency):  # type: ignore[no-untyped-def]
        headers = fields(**{"Idempotency-Key": idempotency})
        self.api.send(
            "POST",
            _path("/train/{}", key),
            _owner(key),
            body=body,
            encoding=encoding,
            params=fields(wait=wait),
            headers=headers,
        )

    @rule(
        target=predictions,
        key=contexts,
        rows=VALID_ROWS,
        encoding=WELL_ENCODED,
        remember=optional(FLAG),
        probabilities=optional(FLAG),
        top_k=optional(st.integers(1, CLASSES)),
    )
    def predict(self, key, rows, encoding, remember, probabilities, top_k):  # type: ignore[no-untyped-def]
        params = fields(remember=remember, probabilities=probabilities, top_k=top_k)
        answer = self.api.send(
            "POST",
            _path("/predict/{}", key),
            _owner(key),
            body={"inputs": rows},
            encoding=encoding,
            params=params,
        )
        if remember != "true":
            return multiple()
        # One id per row whatever the answer, so that the bundle depends on the draws alone;
        # an answer without ids leaves ids that were never issued, for feedback's 404s.
        ids = answer.json().get("prediction_ids") if answer.status_code == 200 else None
        return multiple(*((key, i) for i in ids or [f"p0.0.{n:016x}" for n in range(len(rows))]))

    @rule(
        labelled=st.lists(predictions, min_size=1, max_size=4, unique=True),
        label=st.integers(0, CLASSES - 1),
        encoding=WELL_ENCODED,
        wait=optional(FLAG),
    )
    def feedback(self, labelled, label, encoding, wait):  # type: ignore[no-untyped-def]
        key = labelled[0][0]
        ids = [i for k, i in labelled if k == key]
        body = {"prediction_ids": ids, "labels": [label] * len(ids)}
        self.api.send(
            "POST",
            _path("/feedback/{}", key),
            _owner(key),
            body=body,
            encoding=encoding,
            params=fields(wait=wait),
        )

    @rule(keys=st.lists(contexts, min_size=1, max_size=4), rows=VALID_ROWS, encoding=WELL_ENCODED)
    def predict_many(self, keys, rows, encoding):  # type: ignore[no-untyped-def]
        body = {"items": [{"context": key, "inputs": rows} for key in keys]}
        self.api.send("POST", "/predict", body=body, encoding=encoding)

    @rule(
        key=contexts,
        rows=VALID_ROWS,
        outputs=optional(st.lists(st.sampled_from(["PREDICTIONS", "PROBABILITIES"]), max_size=2)),
        request_id=optional(FRESH_TOKENS),
        binary=st.booleans(),
    )
    def infer(self, key, rows, outputs, request_id, binary):  # type: ignore[no-untyped-def]
        tensor = _tensor([len(rows), WIDTH], [v for row in rows for v in row])
        wanted = {} if outputs is ABSENT else {"outputs": [{"name": name} for name in outputs]}
        body = {"inputs": [tensor], **wanted, **fields(id=request_id)}
        self._infer(key, body, binary, _owner(key))

    @rule(key=contexts)
    def delete(self, key):  # type: ignore[no-untyped-def]
        self.api.send("DELETE", _path("/contexts/{}", key), _owner(key))

    # Hostile steps ------------------------------------------------------------------------

    @rule(
        key=KEYS,
        seed=optional(JUNK),
        power=optional(JUNK),
        encoding=ENCODINGS,
        raw=RAW_BYTES,
        caller=CALLER,
    )
    def register_anything(self, key, seed, power, encoding, raw, caller):  # type: ignore[no-untyped-def]
        body = fields(key=key, seed=seed, power=power)
        self.api.send("POST", "/contexts", caller, body=body, encoding=encoding, raw=raw)

    @rule(
        contexts=st.lists(bodies(st.builds(lambda k: {"key": k}, ANY_KEY)), max_size=4),
        encoding=ENCODINGS,
        caller=CALLER,
    )
    def register_many(self, contexts, encoding, caller):  # type: ignore[no-untyped-def]
        self.api.send(
            "POST", "/contexts:batch", caller, body={"contexts": contexts}, encoding=encoding
        )

    @rule(
        key=ANY_KEY,
        body=bodies(TRAIN_BODIES),
        encoding=ENCODINGS,
        raw=RAW_BYTES,
        wait=optional(FLAGS),
        idempotency=optional(HEADER_TEXT),
        caller=CALLER,
    )
    def train_anything(self, key, body, encoding, raw, wait, idempotency, caller):  # type: ignore[no-untyped-def]
        headers = fields(**{"Idempotency-Key": idempotency})
        self.api.send(
            "POST",
            _path("/train/{}", key),
            caller,
            body=body,
            encoding=encoding,
            raw=raw,
            params=fields(wait=wait),
            headers=headers,
        )

    @rule(
        key=ANY_KEY,
        body=bodies(st.builds(lambda x: {"inputs": x}, ROWS)),
        encoding=ENCODINGS,
        remember=optional(FLAGS),
        probabilities=optional(FLAGS),
        top_k=optional(INTEGERS),
        caller=CALLER,
    )
    def predict_anything(self, key, body, encoding, remember, probabilities, top_k, caller):  # type: ignore[no-untyped-def]
        params = fields(remember=remember, probabilities=probabilities, top_k=top_k)
        self.api.send(
            "POST", _path("/predict/{}", key), caller, body=body, encoding=encoding, params=params
        )

    @rule(
        items=st.lists(
            bodies(st.builds(lambda c, x: {"context": c, "inputs": x}, ANY_KEY, ROWS)), max_size=4
        ),
        encoding=ENCODINGS,
        caller=CALLER,
    )
    def predict_many_anything(self, items, encoding, caller):  # type: ignore[no-untyped-def]
        self.api.send("POST", "/predict", caller, body={"items": items}, encoding=encoding)

    @rule(
        labelled=st.lists(predictions, max_size=3),
        others=st.lists(st.one_of(st.text(max_size=40), JUNK), max_size=2),
        labels=LABELS,
        key=ANY_KEY,
        encoding=ENCODINGS,
        caller=CALLER,
    )
    def feedback_anything(self, labelled, others, labels, key, encoding, caller):  # type: ignore[no-untyped-def]
        body = {"prediction_ids": [i for _, i in labelled] + others, "labels": labels}
        self.api.send("POST", _path("/feedback/{}", key), caller, body=body, encoding=encoding)

    @rule(
        key=ANY_KEY,
        tensor=bodies(
            st.builds(
                _tensor,
                st.one_of(st.builds(lambda n: [n, WIDTH], st.integers(0, MAX_ROWS + 1)), JUNK),
                st.one_of(FLAT_DATA, ROWS, JUNK),
            )
        ),
        extra=st.dictionaries(st.sampled_from(["id", "parameters", "outputs"]), JUNK, max_size=2),
        binary=st.booleans(),
        length=optional(HEADER_INTEGERS),
        caller=CALLER,
    )
    def infer_anything(self, key, tensor, extra, binary, length, caller):  # type: ignore[no-untyped-def]
        self._infer(key, {"inputs": [tensor], **extra}, binary, caller, length)

    def _infer(
        self, key: str, body: dict[str, Any], binary: bool, caller: str, length: Any = ABSENT
    ) -> None:
        """The Open Inference Protocol, JSON, or with the first tensor's data as raw FP32 bytes
        after the JSON header (the binary extension)."""
        headers = {"content-type": "application/json"}
        tail = b""
        tensor = body["inputs"][0]
        if binary and isinstance(tensor, dict) and isinstance(tensor.get("data"), list):
            tail = b"\x00" * 4 * len(tensor["data"])
            tensor = {k: v for k, v in tensor.items() if k != "data"}
            body = {**body, "inputs": [{**tensor, "parameters": {"binary_data_size": len(tail)}}]}
        head, _ = encode(body, "json")
        if tail:
            headers["Inference-Header-Content-Length"] = str(len(head))
        if length is not ABSENT:
            headers["Inference-Header-Content-Length"] = str(length)
        self.api.send(
            "POST",
            _path("/v2/models/{}/infer", key),
            caller,
            encoding="bytes",
            raw=head + tail,
            headers=headers,
        )

    @rule(
        key=ANY_KEY,
        page=st.sampled_from(
            ["/contexts/{}", "/contexts/{}/history", "/v2/models/{}", "/v2/models/{}/ready"]
        ),
        hours=optional(INTEGERS),
        caller=CALLER,
    )
    def read_one(self, key, page, hours, caller):  # type: ignore[no-untyped-def]
        self.api.send("GET", _path(page, key), caller, params=fields(hours=hours))

    @rule(
        path=st.sampled_from(GET_PATHS),
        limit=optional(INTEGERS),
        offset=optional(INTEGERS),
        prefix=optional(PREFIXES),
        shard=optional(INTEGERS),
        caller=CALLER,
    )
    def read_many(self, path, limit, offset, prefix, shard, caller):  # type: ignore[no-untyped-def]
        self.api.send(
            "GET",
            path,
            caller,
            params=fields(limit=limit, offset=offset, prefix=prefix, shard=shard),
        )

    @rule(
        body=bodies(st.builds(lambda v, s: {"version": v, "shard": s}, INTEGERS, INTEGERS)),
        encoding=ENCODINGS,
        caller=CALLER,
    )
    def roll_back(self, body, encoding, caller):  # type: ignore[no-untyped-def]
        self.api.send("POST", "/model/rollback", caller, body=body, encoding=encoding)

    @rule(key=ANY_KEY, caller=CALLER)
    def delete_anything(self, key, caller):  # type: ignore[no-untyped-def]
        self.api.send("DELETE", _path("/contexts/{}", key), caller)

    @rule(
        method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
        path=st.sampled_from(ANY_PATHS),
        content=st.one_of(RAW_BYTES, JUNK.map(lambda v: repr(v).encode())),
        content_type=optional(CONTENT_TYPES),
        gzipped=st.booleans(),
        caller=CALLER,
    )
    def anything(self, method, path, content, content_type, gzipped, caller):  # type: ignore[no-untyped-def]
        """Any method on any route with any bytes, labelled as anything."""
        headers = fields(**{"content-type": content_type})
        if gzipped:
            headers["content-encoding"] = "gzip"
        self.api.send(method, path, caller, encoding="bytes", raw=content, headers=headers)


SETTINGS = settings(
    max_examples=int(os.environ.get("PSP_FUZZ_JOURNEYS", "150")),
    stateful_step_count=60,
    deadline=None,
    derandomize=os.environ.get("PSP_FUZZ_RANDOM") != "1",
    database=None,
    suppress_health_check=list(HealthCheck),
)


def test_every_route_under_a_stateful_fuzz(live: TestClient) -> None:
    sent_before = TALLY["requests"]
    run_machine(lambda: Journey(live), settings=SETTINGS)
    sent = TALLY["requests"] - sent_before
    assert sent >= MIN_REQUESTS, f"only {sent} generated requests; raise PSP_FUZZ_JOURNEYS"
