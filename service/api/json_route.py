"""Routes whose JSON bodies are parsed by orjson: train bodies are thousands of numbers, and
Python's `json` spent more time on them than the rest of the request.

orjson refuses what Python's `json` accepts beyond the standard (NaN, Infinity, integers
past 64 bits). Those bodies are parsed again the standard way, so that validation can answer
with the exact problem ("row 3 holds NaN") instead of a generic decode error, and malformed
JSON still raises the `json.JSONDecodeError` that FastAPI turns into a 422.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute

_UNPARSED = object()


class OrjsonRequest(Request):
    _parsed: Any = _UNPARSED

    async def json(self) -> Any:
        if self._parsed is _UNPARSED:
            body = await self.body()
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
            return await handler(OrjsonRequest(request.scope, request.receive))

        return with_orjson
