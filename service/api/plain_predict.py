"""The plain predict request, answered without FastAPI's per-request machinery.

`POST /predict/{key}` with a small JSON or msgpack body of rows and no query string is nearly
all of a serving deployment's traffic. For each such request FastAPI spent more of the server's
time solving dependencies, validating parameters, serialising the response model and routing
than the request's share of the forward pass (`benchmarks/predict_throughput.py --client wrk`).
This middleware answers that request itself, with the same checks in the same order as the
documented route (`service.api.routes.predict`):

1. the API key (401), before a byte of the body is read;
2. the body, decoded within the value budget (`service.api.body_budget`);
3. the key's length, the key's scope and prefix (422, 403);
4. the key's characters and the body's shape (`PredictRequest`);
5. the prediction, whose failures are answered from `service.api.errors.ANSWERS`.

Whatever it does not recognise as plain (a query string, a large or compressed body, a body
that does not decode, a key or body that does not validate) goes on to the documented route
with its body replayed, which answers as it always did: the OpenAPI document, every error
sentence and every other option stay the route's. The HTTP metrics label these requests with the
route's template, as FastAPI's own routing would.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import orjson
from fastapi import FastAPI
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.auth import Authenticator
from service.api.body_budget import STANDARD_PARSE_BYTES, TooManyValues, decode_msgpack
from service.api.deps import check_context_keys
from service.api.errors import answer_for
from service.api.json_route import BodyLimits
from service.api.schemas import PredictRequest
from service.registry.models import KEY_PATTERN
from service.runtime.runtime import Runtime

PREFIX = "/predict/"
TEMPLATE = "/predict/{key}"
_KEY = re.compile(KEY_PATTERN)
_JSON = b"application/json"
_MSGPACK = b"application/msgpack"
_ANSWER_HEADERS = [(b"content-type", b"application/json")]


@dataclass(frozen=True)
class _RouteLabel:
    """What the HTTP metrics read of a matched route (`service.api.http_metrics`)."""

    path: str


_ROUTE_LABEL = _RouteLabel(TEMPLATE)


class _NotPlain(Exception):
    """The request is not a plain one: the documented route answers it."""


class PlainPredict:
    """Answers plain `POST /predict/{key}` requests; hands every other request on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = _plain_key(scope)
        if key is None:
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        if headers.get(b"content-encoding") or not _small(headers):
            await self.app(scope, receive, send)
            return
        app: FastAPI = scope["app"]
        scope["route"] = _ROUTE_LABEL
        received: list[bytes] = []
        try:
            answer = await self._answer(app, key, headers, receive, received)
        except _NotPlain:
            await self.app(scope, _replaying(received, receive), send)
            return
        except Exception as error:
            mapped = answer_for(error)
            if mapped is None:
                raise
            response = mapped.respond(error, app.state.runtime.settings)
            await response(scope, receive, send)
            return
        if answer is not None:
            await _send_json(send, answer)

    async def _answer(
        self,
        app: FastAPI,
        key: str,
        headers: dict[bytes, bytes],
        receive: Receive,
        received: list[bytes],
    ) -> bytes | None:
        """The answer's body; None when the client went away before its body arrived.

        Raises:
            _NotPlain: The request is for the documented route after all.
        """
        authenticator: Authenticator = app.state.authenticator
        caller = authenticator.authenticate(_presented_key(headers))
        if not await _receive_body(receive, received):
            return None
        limits: BodyLimits = app.state.body_limits
        body = _decode(b"".join(received), headers.get(b"content-type", b""), limits)
        runtime: Runtime = app.state.runtime
        check_context_keys(runtime, caller, "predict", [key])
        if not _KEY.fullmatch(key):
            raise _NotPlain
        try:
            request = PredictRequest.model_validate(body)
        except ValidationError:
            raise _NotPlain from None
        result = await runtime.prediction.predict(key, request.inputs)
        return orjson.dumps(
            {
                "predictions": result.classes.tolist(),
                "probabilities": result.probabilities.tolist(),
                "model_version": result.model_version,
            }
        )


def _plain_key(scope: Scope) -> str | None:
    """The context key of a `POST /predict/{key}` without a query string, or None."""
    if scope["type"] != "http" or scope["method"] != "POST" or scope.get("query_string"):
        return None
    path: str = scope["path"]
    if scope.get("root_path") or not path.startswith(PREFIX):
        return None
    key = path[len(PREFIX) :]
    return key if key and "/" not in key else None


def _headers(scope: Scope) -> dict[bytes, bytes]:
    """The headers the plain path reads, by lower-case name (ASGI servers lower-case them)."""
    return dict(scope["headers"])


def _small(headers: dict[bytes, bytes]) -> bool:
    """Whether the body is declared, and small enough to decode on the event loop at once."""
    declared = headers.get(b"content-length", b"")
    return declared.isdigit() and int(declared) <= STANDARD_PARSE_BYTES


def _presented_key(headers: dict[bytes, bytes]) -> str | None:
    """The API key as `service.api.deps.presented_key` reads it."""
    api_key = headers.get(b"x-api-key")
    if api_key:
        return api_key.decode("latin-1")
    scheme, _, credentials = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None


async def _receive_body(receive: Receive, received: list[bytes]) -> bool:
    """Appends the body's chunks to `received`; False if the client disconnected first."""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return False
        received.append(message.get("body", b""))
        if not message.get("more_body", False):
            return True


def _decode(body: bytes, content_type: bytes, limits: BodyLimits) -> Any:
    """The decoded body, within the value budget.

    Raises:
        _NotPlain: Another content type, or a body that does not decode within its limits.
    """
    media_type = content_type.split(b";")[0].strip().lower()
    try:
        if media_type == _JSON and len(body) <= limits.max_values:
            decoded = orjson.loads(body)
        elif media_type == _MSGPACK:
            decoded = decode_msgpack(body, limits.max_values)
        else:
            raise _NotPlain
    except (orjson.JSONDecodeError, TooManyValues, ValueError, msgpack.UnpackException):
        raise _NotPlain from None
    # Only `inputs`, with no more rows than allowed: what the route's list caps would let by
    # (`BodyLimits.check_lists`); anything else is the route's to refuse.
    if not (isinstance(decoded, dict) and len(decoded) == 1):
        raise _NotPlain
    inputs = decoded.get("inputs")
    if not isinstance(inputs, list) or len(inputs) > limits.max_rows:
        raise _NotPlain
    return decoded


def _replaying(received: Sequence[bytes], receive: Receive) -> Receive:
    """`receive`, after first giving back the chunks already read, as one."""
    pending = [b"".join(received)] if received else []

    async def replay() -> Message:
        if pending:
            # The whole body was read (or the client left): nothing more follows it.
            return {"type": "http.request", "body": pending.pop(), "more_body": False}
        return await receive()

    return replay


async def _send_json(send: Send, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [*_ANSWER_HEADERS, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
