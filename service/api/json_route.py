"""Routes whose bodies are read only for a known caller, and decoded within bounds.

The caller's API key is checked before the body is read, so a caller without a valid key costs
no more than its headers. The body is then decoded within the limits of
`service.api.body_budget`: JSON and msgpack bodies may hold no more values than the largest valid
request, and gzip bodies inflate to at most the body size limit.

JSON is parsed by orjson: train bodies are thousands of numbers, and Python's `json` spent more
time on them than the rest of the request. orjson refuses what Python's `json` accepts beyond
the standard (NaN, Infinity, integers past 64 bits); small bodies are parsed again the standard
way, so that validation can answer with the exact problem ("row 3 holds NaN"). Malformed JSON
raises the `json.JSONDecodeError` that FastAPI turns into a 422.

The same routes take `Content-Type: application/msgpack` bodies (parsed by msgpack, several
times faster than JSON for thousands of numbers) and `Content-Encoding: gzip` bodies.
"""

from __future__ import annotations

import asyncio
import functools
import json
import zlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute

from service.api.body_budget import (
    TooManyValues,
    check_json_budget,
    decode_json,
    decode_msgpack,
    json_values,
    needs_counting,
    value_budget,
)
from service.api.body_buffer import BodyBuffer
from service.api.deps import presented_key
from service.api.schemas import MAX_BATCH_CONTEXTS, MAX_PREDICT_ITEMS
from service.settings import LimitSettings, ModelSettings, Settings

_UNPARSED = object()
MSGPACK = b"application/msgpack"


def _malformed(what: str) -> json.JSONDecodeError:
    """A decode error FastAPI answers like malformed JSON (422), with `what` in its message."""
    return json.JSONDecodeError(what, "", 0)


INFLATED_PIECE_BYTES = 1 << 20
"""A gzip body is inflated a megabyte at a time into its buffer."""


def inflate(body: bytes, max_bytes: int) -> bytes:
    """A gzip body, inflated to at most `max_bytes` (a small body may not expand without end),
    into a `BodyBuffer` of its own.

    Raises:
        json.JSONDecodeError: Not gzip, or larger than `max_bytes` once inflated.
    """
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    inflated = BodyBuffer(max_bytes)
    pending: bytes = body
    try:
        while pending:
            piece = inflater.decompress(pending, INFLATED_PIECE_BYTES)
            pending = inflater.unconsumed_tail
            _append_inflated(inflated, piece)
        _append_inflated(inflated, inflater.flush())
    except zlib.error:
        raise _malformed("the body is not valid gzip") from None
    return inflated.view()  # type: ignore[return-value]


def _append_inflated(inflated: BodyBuffer, piece: bytes) -> None:
    if not inflated.fits(len(piece)):
        raise _malformed("the inflated body is larger than the limit")
    inflated.append(piece)


LARGE_BODY_BYTES = 1 << 20
"""Bodies declared at least this large are received into a `BodyBuffer` of their own."""


async def read_body(request: Request) -> bytes:
    """The request's body in one buffer (the body size limit, `service.api.limits`, has
    already refused a declared length over it).

    A large body goes straight into a `BodyBuffer`; a smaller one is joined from its chunks.
    Either way the body is not held twice, as chunks and then joined, and no buffer is
    zero-filled in one go on the event loop.
    """
    declared = request.headers.get("content-length", "")
    if not declared.isdigit() or int(declared) < LARGE_BODY_BYTES:
        return b"".join([chunk async for chunk in request.stream()])
    buffer = BodyBuffer(int(declared))
    async for chunk in request.stream():
        if not buffer.fits(len(chunk)):  # HTTP servers stop a body at its length; in case not
            raise HTTPException(400, "the body is longer than its Content-Length header says")
        buffer.append(chunk)
    return buffer.view()  # type: ignore[return-value]


class BodyOverBudget(HTTPException):
    """413 from inside FastAPI's body parsing, which lets only HTTP exceptions through as
    they are."""

    def __init__(self, error: TooManyValues) -> None:
        super().__init__(status_code=413, detail=str(error))


@dataclass(frozen=True)
class BodyLimits:
    """How far a body may inflate (bytes), how many values it may decode to, how long each of
    its lists may be, and how many rows it may hold."""

    max_inflated_bytes: int
    max_values: int
    max_rows: int

    @classmethod
    def of(cls, limits: LimitSettings, model: ModelSettings) -> BodyLimits:
        budget = value_budget(limits.max_rows, model.input_shape)
        return cls(limits.max_body_bytes, budget, limits.max_rows)

    @functools.cached_property
    def list_caps(self) -> dict[str, tuple[int, str]]:
        """The longest list each top-level field of a body may hold, and what it holds."""
        rows = self.max_rows
        return {
            "inputs": (rows, "rows"),
            "labels": (rows, "labels"),
            "prediction_ids": (rows, "ids"),
            "items": (MAX_PREDICT_ITEMS, "items"),
            "contexts": (MAX_BATCH_CONTEXTS, "contexts"),
        }

    def check_lists(self, body: Any) -> None:
        """Refuses a decoded body whose lists are longer than a valid request's, before any of
        their items is validated or used.

        Raises:
            TooManyValues: A list over its cap, or items holding more rows together than
                `max_rows`.
        """
        if not isinstance(body, dict):
            return
        for name, (cap, unit) in self.list_caps.items():
            entries = body.get(name)
            if isinstance(entries, list) and len(entries) > cap:
                raise TooManyValues(
                    f"{name} has {len(entries)} {unit}, more than the limit of {cap}; split it "
                    f"into requests of at most {cap} {unit}"
                )
        items = body.get("items")
        if isinstance(items, list):
            rows = sum(
                len(item["inputs"])
                for item in items
                if isinstance(item, dict) and isinstance(item.get("inputs"), list)
            )
            if rows > self.max_rows:
                raise TooManyValues(
                    f"the items hold {rows} rows together, more than the limit of "
                    f"{self.max_rows}; split them into requests of at most {self.max_rows} rows"
                )

    @classmethod
    def configured(cls, settings: Settings) -> BodyLimits:
        return cls.of(settings.limits, settings.model)


DEFAULT_LIMITS = BodyLimits.of(LimitSettings(), ModelSettings())


class BoundedRequest(Request):
    """A request whose `json()` decodes JSON, msgpack and gzip bodies within its limits."""

    _parsed: Any = _UNPARSED
    is_msgpack = False
    limits = DEFAULT_LIMITS

    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            raw = await read_body(self)
            if self.headers.get("content-encoding", "").lower() == "gzip":
                # zlib lets go of the interpreter while it inflates: the event loop runs on.
                raw = await asyncio.to_thread(inflate, raw, self.limits.max_inflated_bytes)
            self._body = raw
        return self._body

    async def json(self) -> Any:
        if self._parsed is _UNPARSED:
            body = await self.body()
            try:
                parsed = await self._decode(body)
                self.limits.check_lists(parsed)
            except TooManyValues as error:
                raise BodyOverBudget(error) from None
            self._parsed = parsed
        return self._parsed

    async def _decode(self, body: bytes) -> Any:
        budget = self.limits.max_values
        if self.is_msgpack:
            return decode_msgpack(body, budget)
        if needs_counting(body, budget):
            # NumPy counts without the interpreter, so the event loop runs on meanwhile.
            check_json_budget(await asyncio.to_thread(json_values, body, budget), budget)
        return decode_json(body)


class BoundedBodyRoute(APIRoute):
    """An `APIRoute` that authenticates the caller before anything else and hands its handler
    a `BoundedRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def bounded(request: Request) -> Response:
            state = request.app.state
            authenticator = getattr(state, "authenticator", None)
            if authenticator is not None:
                # Raises Unauthorized (401) before a byte of the body is read; the route's own
                # dependency checks the scope and the context's prefix later.
                authenticator.authenticate(presented_key(request))
            scope = request.scope
            content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            is_msgpack = content_type.encode() == MSGPACK
            if is_msgpack:
                # FastAPI reads only JSON content types as structured bodies.
                headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
                scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
            wrapped = BoundedRequest(scope, request.receive)
            wrapped.is_msgpack = is_msgpack
            wrapped.limits = getattr(state, "body_limits", DEFAULT_LIMITS)
            return await handler(wrapped)

        return bounded
