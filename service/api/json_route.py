"""Routes whose JSON bodies are parsed by orjson: train bodies are thousands of numbers, and
Python's `json` spent more time on them than the rest of the request.

orjson refuses what Python's `json` accepts beyond the standard (NaN, Infinity, integers
past 64 bits). Those bodies are parsed again the standard way, so that validation can answer
with the exact problem ("row 3 holds NaN") instead of a generic decode error, and malformed
JSON still raises the `json.JSONDecodeError` that FastAPI turns into a 422.

The same routes take `Content-Type: application/msgpack` bodies (parsed by msgpack, several
times faster than JSON for thousands of numbers) and `Content-Encoding: gzip` bodies, inflated
up to the body size limit.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Coroutine
from typing import Any

import msgpack
import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute

_UNPARSED = object()
MSGPACK = b"application/msgpack"


def _malformed(what: str) -> json.JSONDecodeError:
    """A decode error FastAPI answers like malformed JSON (422), with `what` in its message."""
    return json.JSONDecodeError(what, "", 0)


def inflate(body: bytes, max_bytes: int) -> bytes:
    """A gzip body, inflated to at most `max_bytes` (a small body may not expand without end).

    Raises:
        json.JSONDecodeError: Not gzip, or larger than `max_bytes` once inflated.
    """
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, max_bytes + 1)
    except zlib.error:
        raise _malformed("the body is not valid gzip") from None
    if len(data) > max_bytes or inflater.unconsumed_tail:
        raise _malformed("the inflated body is larger than the limit")
    return data


class OrjsonRequest(Request):
    _parsed: Any = _UNPARSED
    is_msgpack = False
    max_inflated_bytes = 16 * 1024 * 1024

    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            raw = await super().body()
            if self.headers.get("content-encoding", "").lower() == "gzip":
                raw = inflate(raw, self.max_inflated_bytes)
            self._body = raw
        return self._body

    async def json(self) -> Any:
        if self._parsed is _UNPARSED:
            body = await self.body()
            if self.is_msgpack:
                try:
                    self._parsed = msgpack.unpackb(body)
                except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
                    raise _malformed("the body is not valid msgpack") from None
                return self._parsed
            try:
                self._parsed = orjson.loads(body)
            except orjson.JSONDecodeError:
                self._parsed = json.loads(body)
        return self._parsed


class OrjsonRoute(APIRoute):
    """An `APIRoute` that hands its handler an `OrjsonRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def with_orjson(request: Request) -> Response:
            scope = request.scope
            content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            is_msgpack = content_type.encode() == MSGPACK
            if is_msgpack:
                # FastAPI reads only JSON content types as structured bodies.
                headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
                scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
            wrapped = OrjsonRequest(scope, request.receive)
            wrapped.is_msgpack = is_msgpack
            runtime = getattr(request.app.state, "runtime", None)
            if runtime is not None:
                wrapped.max_inflated_bytes = runtime.settings.limits.max_body_bytes
            return await handler(wrapped)

        return with_orjson
