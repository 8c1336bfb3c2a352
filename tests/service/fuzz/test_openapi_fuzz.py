"""Schemathesis fuzzes the live app's OpenAPI schema, every operation with JSON bodies and,
where the routes read them, msgpack ones: no 5xx, answers that conform to the schema, and no
change to the weights from any rejected request."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import ignored_auth, positive_data_acceptance

from service.api.auth import issue_key
from service.app import create_app
from service.entry_ids import entry_id_key
from service.settings import Settings
from tests.service.fuzz.tally import record

# The schema must exist when the module is collected; building the app does no I/O.
DATA_DIR = Path(tempfile.mkdtemp(prefix="psp-fuzz-"))
KEY, SPEC = issue_key(["admin", "predict", "train"])
AUTH = {"Authorization": f"Bearer {KEY}"}
KEY_HEADERS = ("authorization", "x-api-key")
APP = create_app(
    Settings(
        data_dir=DATA_DIR,
        device="cpu",
        model={"kind": "binary", "hidden": [8]},
        limits={"wait_seconds": 5},
        api_keys=[SPEC],
        # The steps in a thread: the routes under fuzz are the same, without a child process.
        training={"steps_in": "thread"},
    )
)
# How a request that violates the schema may be refused: schemathesis's own list, and 413,
# which answers a list over its cap before any item is read (`service.api.json_route`).
REJECTED = [
    *("400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"),
    "5xx",  # as in schemathesis's list; the test itself fails every 5xx
]
schema = schemathesis.openapi.from_dict(
    APP.openapi(),
    config=SchemathesisConfig.from_dict(
        {"checks": {"negative_data_rejection": {"expected-statuses": REJECTED}}}
    ),
)


@schemathesis.serializer("application/msgpack")
def _msgpack(context: schemathesis.SerializationContext, value: Any) -> bytes:
    """Bodies of the routes that read msgpack (`service.api.openapi` declares them); what
    msgpack cannot pack (integers past 64 bits) goes as the bytes of its JSON text."""
    try:
        return msgpack.packb(value)
    except (OverflowError, TypeError, ValueError):
        return repr(value).encode()


ACCEPTED: list[str] = []
"""Ids of the entries the live app's queue has accepted."""


@pytest.fixture(scope="module")
def live() -> Iterator[TestClient]:
    with TestClient(APP) as client:
        _remember_accepted_entries(client)
        for key in ("tenant-1", "a", "0"):
            client.post("/contexts", json={"key": key}, headers=AUTH)
        yield client


def _remember_accepted_entries(client: TestClient) -> None:
    """Notes in ACCEPTED the id of each entry the queue accepts, whatever the route (train or
    feedback) and whatever the answer (202, 200, or the 504 of a wait that ran out)."""
    queue = client.app.state.runtime.shards[0].queue  # type: ignore[attr-defined]
    enqueue = queue.enqueue

    async def enqueue_and_remember(*args: Any, **kwargs: Any) -> Any:
        queued = await enqueue(*args, **kwargs)
        ACCEPTED.append(queued.entry_id)
        return queued

    queue.enqueue = enqueue_and_remember


def _weights(client: TestClient) -> tuple[str, int]:
    """The weights and version once the trainer has applied every entry accepted so far, so
    that an earlier case's batch still training cannot change them between two reads."""
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    if ACCEPTED:  # the trainer applies entries in id order: the newest is applied last
        client.portal.call(runtime.shards[0].applied.wait, max(ACCEPTED, key=entry_id_key), 30.0)
    digest = hashlib.sha256()
    for tensor in runtime.shards[0].host.learner.model.state_dict().values():
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest(), runtime.shards[0].host.model_version


@schema.parametrize()
@settings(
    max_examples=int(os.environ.get("PSP_FUZZ_EXAMPLES", "40")),
    deadline=None,
    derandomize=os.environ.get("PSP_FUZZ_RANDOM") != "1",
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
def test_no_server_errors_and_answers_conform(case: schemathesis.Case, live: TestClient) -> None:
    before = _weights(live)
    # Always the valid key in place of the generated ones, so that the cases reach the routes'
    # checks (tests/service/api/test_auth.py and the stateful fuzz send wrong keys and none).
    generated = case.headers or {}
    case.headers = {k: v for k, v in generated.items() if k.lower() not in KEY_HEADERS}
    response = live.request(**case.as_transport_kwargs(base_url="http://testserver", headers=AUTH))
    record(case.method, case.formatted_path, response)
    assert response.status_code < 500, response.text
    # Two checks do not apply. "Ignored auth": the valid key is added here, outside
    # schemathesis, which would read it as a generated invalid one (tests/service/api/test_auth.py
    # covers auth). "Positive data acceptance": the contract has rules that OpenAPI cannot
    # state (one label per row, row width of the configured model, seed or power by kind), so
    # schema-valid bodies may rightly get a 422.
    case.validate_response(response, excluded_checks=[ignored_auth, positive_data_acceptance])
    if response.status_code >= 400:
        assert isinstance(response.json()["detail"], str)
        assert _weights(live) == before


def _send(case: schemathesis.Case, live: TestClient, headers: dict[str, str] | None = None):
    response = live.request(
        **case.as_transport_kwargs(
            base_url="http://testserver", headers={**AUTH, **(headers or {})}
        )
    )
    case.validate_response(response, excluded_checks=[ignored_auth, positive_data_acceptance])
    return response


def test_conflicts_and_rebound_idempotency_keys_conform(live: TestClient) -> None:
    """The 409 of a seed in use and the 422 of an idempotency key sent with another batch are
    part of the schema, and leave the weights alone."""
    register = schema["/contexts"]["POST"]
    json = "application/json"
    owner = register.Case(body={"key": "fuzz-owner", "seed": 4242}, media_type=json)
    assert _send(owner, live).status_code in (
        200,
        201,
    )
    before = _weights(live)
    taken = _send(register.Case(body={"key": "fuzz-thief", "seed": 4242}, media_type=json), live)
    assert taken.status_code == 409 and "seed 4242" in taken.json()["detail"]
    batch = schema["/contexts:batch"]["POST"].Case(
        body={"contexts": [{"key": "fuzz-thief", "seed": 4242}]}, media_type=json
    )
    assert _send(batch, live).status_code == 409

    train = schema["/train/{key}"]["POST"]
    assert _weights(live) == before
    first = train.Case(
        path_parameters={"key": "fuzz-owner"},
        query={"wait": "true"},  # applied before the weights are read again
        body={"inputs": [[0.0] * 64], "labels": [1]},
        media_type=json,
    )
    other = train.Case(
        path_parameters={"key": "fuzz-owner"},
        body={"inputs": [[0.5] * 64], "labels": [2]},
        media_type=json,
    )
    token = {"Idempotency-Key": "fuzz-token-1"}
    assert _send(first, live, token).status_code == 200
    trained = _weights(live)
    rebound = _send(other, live, token)
    assert rebound.status_code == 422 and "different batch" in rebound.json()["detail"]
    assert _weights(live) == trained
