"""The plain predict path (`service.api.plain_predict`): it answers plain requests itself, as
the documented route would, and hands everything else to the route with the body intact."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import msgpack
import orjson
import pytest
from fastapi.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from service.api.auth import issue_key
from service.api.plain_predict import PlainPredict
from service.app import create_app
from tests.service.api.helpers import register, rows, snapshot
from tests.service.conftest import SettingsFactory

PREDICT_KEY, PREDICT_SPEC = issue_key(["predict"])
TENANT_KEY, TENANT_SPEC = issue_key(["admin", "predict"], key_prefix="tenant-a:")
ADMIN_KEY, ADMIN_SPEC = issue_key(["admin", "predict", "train"])

# A query parameter at its default value: the same request, answered by the documented route.
THROUGH_THE_ROUTE = "?probabilities=true"


@pytest.fixture
def secured(make_settings: SettingsFactory) -> Iterator[TestClient]:
    settings = make_settings(
        api_keys=[spec.model_dump() for spec in (PREDICT_SPEC, TENANT_SPEC, ADMIN_SPEC)],
        limits={"max_key_length": 24},
    )
    with TestClient(create_app(settings)) as client:
        for key in ("shared", "tenant-a:one", "tenant-b:one"):
            client.post("/contexts", json={"key": key}, headers=_bearer(ADMIN_KEY))
        yield client


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _case(
    what: str, path: str, headers: dict[str, str], body: Any, content_type: str = "application/json"
) -> Any:
    """One request of the table: `body` is sent as it is if bytes, else as JSON."""
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return pytest.param(path, headers, raw, content_type, id=what)


ONE_ROW = {"inputs": rows(1)}
READER = _bearer(PREDICT_KEY)
TENANT = _bearer(TENANT_KEY)
REQUESTS = [
    _case("a valid request", "/predict/shared", READER, {"inputs": rows(3)}),
    _case(
        "msgpack rows",
        "/predict/shared",
        {"X-API-Key": PREDICT_KEY},
        msgpack.packb({"inputs": rows(2, 0.25)}),
        "application/msgpack",
    ),
    _case("rows of the wrong shape", "/predict/shared", READER, {"inputs": [[[0.5] * 8] * 7]}),
    _case("no key", "/predict/shared", {}, ONE_ROW),
    _case("a wrong key", "/predict/shared", _bearer(PREDICT_KEY[:-2] + "xx"), ONE_ROW),
    _case("a key without the scope", "/predict/shared", _bearer(issue_key(["train"])[0]), ONE_ROW),
    _case("a context outside the prefix", "/predict/tenant-b:one", TENANT, ONE_ROW),
    _case("a context inside the prefix", "/predict/tenant-a:one", TENANT, ONE_ROW),
    _case("an unknown context", "/predict/nobody", READER, ONE_ROW),
    _case("a key too long", "/predict/" + "k" * 30, READER, ONE_ROW),
    _case("a key with spaces", "/predict/bad key!", READER, ONE_ROW),
    _case("malformed JSON", "/predict/shared", READER, b'{"inputs": [[0.5,'),
    _case("NaN", "/predict/shared", READER, b'{"inputs": [[NaN' + b", 0.5" * 63 + b"]]}"),
    _case("no rows", "/predict/shared", READER, {"inputs": []}),
    _case("a field too many", "/predict/shared", READER, {"inputs": rows(1), "labels": [1]}),
    _case("rows that are numbers", "/predict/shared", READER, {"inputs": [0.5] * 64}),
    _case("too many rows", "/predict/shared", READER, {"inputs": rows(300, 0.1, 2)}),
    _case("a text body", "/predict/shared", READER, b"inputs=1", "text/plain"),
    _case("an empty body", "/predict/shared", READER, b""),
]


@pytest.mark.parametrize(("path", "headers", "body", "content_type"), REQUESTS)
def test_every_request_is_answered_as_the_documented_route_answers_it(
    secured: TestClient, path: str, headers: dict[str, str], body: bytes, content_type: str
) -> None:
    headers = {**headers, "Content-Type": content_type}
    before = snapshot_of(secured)
    plain = secured.post(path, content=body, headers=headers)
    routed = secured.post(path + THROUGH_THE_ROUTE, content=body, headers=headers)
    assert (plain.status_code, plain.json()) == (routed.status_code, routed.json())
    assert plain.headers.get("www-authenticate") == routed.headers.get("www-authenticate")
    assert snapshot_of(secured) == before


def snapshot_of(client: TestClient) -> tuple[str, int, list[dict[str, Any]], int]:
    """`snapshot`, whose listing of the contexts takes an admin key."""
    client.headers["Authorization"] = f"Bearer {ADMIN_KEY}"
    try:
        return snapshot(client)
    finally:
        del client.headers["Authorization"]


def test_a_valid_answer_holds_the_classes_probabilities_and_version(client: TestClient) -> None:
    register(client, "t")
    body = client.post("/predict/t", json={"inputs": rows(2, 0.75)}).json()
    assert set(body) == {"predictions", "probabilities", "model_version"}
    assert body["model_version"] == 0
    for predicted, probabilities in zip(body["predictions"], body["probabilities"], strict=True):
        assert math.isclose(sum(probabilities), 1.0, abs_tol=1e-5)
        assert predicted == max(range(10), key=probabilities.__getitem__)


class _Inner:
    """The app behind the plain path: records what reaches it, answers 204."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        self.bodies.append(b"".join(chunks))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def _call(client: TestClient, path: str, query: bytes, body: bytes) -> tuple[_Inner, list[Message]]:
    """`body` posted through a `PlainPredict` in front of `_Inner`, in chunks of 100 bytes."""
    inner = _Inner()
    sent: list[Message] = []
    chunks = [body[start : start + 100] for start in range(0, len(body), 100)] or [b""]
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "query_string": query,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "app": client.app,
    }

    async def receive() -> Message:
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message: Message) -> None:
        sent.append(message)

    async def run() -> None:
        await PlainPredict(inner)(scope, receive, send)

    assert client.portal is not None
    client.portal.call(run)
    return inner, sent


def test_a_plain_request_never_reaches_the_route(client: TestClient) -> None:
    register(client, "t")
    inner, sent = _call(client, "/predict/t", b"", orjson.dumps({"inputs": rows(2)}))
    assert inner.bodies == []
    assert sent[0]["status"] == 200
    assert len(orjson.loads(sent[1]["body"])["predictions"]) == 2


@pytest.mark.parametrize(
    ("path", "query", "body"),
    [
        ("/predict/t", b"top_k=2", orjson.dumps({"inputs": rows(2)})),
        ("/predict/t", b"", orjson.dumps({"inputs": rows(2), "extra": 1})),
        ("/predict/t", b"", b'{"inputs": [[Infinity]]}'),
        ("/predict/t t", b"", orjson.dumps({"inputs": rows(1)})),
    ],
    ids=["a query string", "an extra field", "Infinity", "a key with a space"],
)
def test_any_other_request_reaches_the_route_with_its_body_whole(
    client: TestClient, path: str, query: bytes, body: bytes
) -> None:
    register(client, "t")
    inner, sent = _call(client, path, query, body)
    assert inner.bodies == [body]
    assert sent[0]["status"] == 204


def test_other_paths_and_methods_pass_untouched(client: TestClient) -> None:
    inner, _ = _call(client, "/predict", b"", orjson.dumps({"items": []}))
    assert inner.bodies == [orjson.dumps({"items": []})]
    inner, _ = _call(client, "/predict/t/more", b"", b"{}")
    assert inner.bodies == [b"{}"]
