"""Maps failures to HTTP answers of the form {"detail": "<what is wrong; what to send>"}."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.auth import Forbidden, Unauthorized
from service.contexts import ContextNotFound
from service.control import RollbackFailed
from service.payloads import PayloadError, TooManyRows
from service.queue.base import IdempotencyConflict, QueueFull, QueueUnavailable
from service.registry.queries import (
    ContextConflict,
    ContextParameterTaken,
    InvalidContextParameters,
)
from service.registry.store import RegistryUnavailable
from service.training import NotAppliedInTime

_EXAMPLES = {
    "/contexts:batch": '{"contexts": [{"key": "tenant-1"}, {"key": "tenant-2", "seed": 7}]}',
    "/contexts": '{"key": "tenant-1"} (optionally with "seed": int or "power": float)',
    "/train": '{"inputs": [[0.0, 0.5, ...], ...], "labels": [3, ...]}',
    "/predict": '{"inputs": [[0.0, 0.5, ...], ...]}',
    "/model/rollback": '{"version": 120}',
}


def _example_for(path: str) -> str:
    for prefix, example in _EXAMPLES.items():
        if path.startswith(prefix):
            return example
    return "a JSON body as described at /docs"


def _location(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    text = ""
    for part in parts:
        text += f"[{part}]" if part.isdigit() else (f".{part}" if text else part)
    return text or "body"


def _validation_sentence(request: Request, exc: RequestValidationError) -> str:
    example = _example_for(request.url.path)
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON; send a JSON object such as {example}"
    if first.get("type") == "missing" and tuple(first.get("loc", ())) == ("body",):
        return f"the request has no body; send a JSON object such as {example}"
    location = _location(tuple(first.get("loc", ())))
    message = str(first.get("msg", "is invalid")).rstrip(".")
    if first.get("type") == "finite_number":
        message = "must be a finite number, not NaN or Infinity"
    count = len(exc.errors())
    more = f" (and {count - 1} more problems)" if count > 1 else ""
    return f"{location}: {message}{more}; send {example}"


def _problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Registers one handler per failure type the service layer raises."""

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _problem(422, _validation_sentence(request, exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"there is no route {request.url.path}; see /docs for the API"
        headers = getattr(exc, "headers", None)
        if exc.status_code == 400 and detail == "There was an error parsing the body":
            # Bodies that are not even text (invalid UTF-8) are malformed JSON like any other.
            example = _example_for(request.url.path)
            return _problem(
                422, f"the request body is not valid JSON; send a JSON object such as {example}"
            )
        if exc.status_code == 405:
            # Several routes may share a path (GET and POST /contexts); list all their methods.
            allowed = sorted(
                {
                    method
                    for route in request.app.router.routes
                    if isinstance(route, APIRoute) and route.path_regex.match(request.url.path)
                    for method in route.methods or ()
                }
            )
            detail = (
                f"{request.method} is not allowed on {request.url.path}; use {', '.join(allowed)}"
            )
            headers = {"Allow": ", ".join(allowed)}
        return _problem(exc.status_code, detail, headers)

    @app.exception_handler(PayloadError)
    async def bad_payload(request: Request, exc: PayloadError) -> JSONResponse:
        return _problem(413 if isinstance(exc, TooManyRows) else 422, str(exc))

    @app.exception_handler(InvalidContextParameters)
    async def bad_context(request: Request, exc: InvalidContextParameters) -> JSONResponse:
        return _problem(422, str(exc))

    @app.exception_handler(ContextNotFound)
    async def not_found(request: Request, exc: ContextNotFound) -> JSONResponse:
        return _problem(404, str(exc.args[0]))

    @app.exception_handler(ContextConflict)
    async def conflict(request: Request, exc: ContextConflict) -> JSONResponse:
        return _problem(409, str(exc))

    @app.exception_handler(ContextParameterTaken)
    async def parameter_taken(request: Request, exc: ContextParameterTaken) -> JSONResponse:
        return _problem(409, str(exc))

    @app.exception_handler(IdempotencyConflict)
    async def idempotency_conflict(request: Request, exc: IdempotencyConflict) -> JSONResponse:
        return _problem(422, str(exc))

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        return _problem(
            429,
            f"{exc}; retry after {exc.retry_after} s, or send smaller batches less often",
            {"Retry-After": str(exc.retry_after)},
        )

    @app.exception_handler(QueueUnavailable)
    async def queue_down(request: Request, exc: QueueUnavailable) -> JSONResponse:
        return _problem(
            503,
            f"the train queue is unreachable ({exc}); nothing was queued, retry later",
            {"Retry-After": "1"},
        )

    @app.exception_handler(RegistryUnavailable)
    async def registry_down(request: Request, exc: RegistryUnavailable) -> JSONResponse:
        return _problem(
            503,
            "the context registry is unreachable; nothing was changed, retry later",
            {"Retry-After": "1"},
        )

    @app.exception_handler(Unauthorized)
    async def unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
        return _problem(401, str(exc), {"WWW-Authenticate": "Bearer"})

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> JSONResponse:
        return _problem(403, str(exc))

    @app.exception_handler(RollbackFailed)
    async def no_such_version(request: Request, exc: RollbackFailed) -> JSONResponse:
        return _problem(404, f"{exc}; send one of the kept versions listed by GET /model")

    @app.exception_handler(TimeoutError)
    async def timed_out(request: Request, exc: TimeoutError) -> JSONResponse:
        return _problem(504, f"{exc}; retry later")

    @app.exception_handler(NotAppliedInTime)
    async def too_slow(request: Request, exc: NotAppliedInTime) -> JSONResponse:
        return _problem(504, str(exc))
