"""Maps failures to HTTP answers of the form {"detail": "<what is wrong; what to send>"}."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from service.auth import Forbidden, Unauthorized
from service.contexts import ContextNotFound
from service.control import RollbackFailed
from service.feedback.service import (
    AlreadyLabelled,
    ExpiredPredictions,
    FeedbackUnavailable,
    UnknownPredictions,
)
from service.model_host import ModelUnhealthy
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
    "/predict/": '{"inputs": [[0.0, 0.5, ...], ...]}',
    "/predict": '{"items": [{"context": "tenant-1", "inputs": [[0.0, 0.5, ...], ...]}, ...]}',
    "/contexts:batch": '{"contexts": [{"key": "tenant-1"}, {"key": "tenant-2", "seed": 7}]}',
    "/contexts": '{"key": "tenant-1"} (optionally with "seed": int or "power": float)',
    "/train": '{"inputs": [[0.0, 0.5, ...], ...], "labels": [3, ...]}',
    "/feedback": '{"prediction_ids": ["p2.18c3a5f4e21.5f0c9d2e8a7b6c41", ...], "labels": [3, ...]}',
    "/model/rollback": '{"version": 120}',
}

_PARAMETER_HINTS = {
    ("query", "limit"): "an integer from 0 to 1000 as ?limit=",
    ("query", "offset"): "an integer from 0 to 2**63 - 1 as ?offset=",
    (
        "query",
        "prefix",
    ): "up to 128 characters from A-Z, a-z, 0-9, '.', '_', ':' and '-' as ?prefix=",
    ("query", "wait"): "true or false as ?wait=",
    ("query", "remember"): "true or false as ?remember=",
    ("query", "probabilities"): "true or false as ?probabilities=",
    ("query", "top_k"): "an integer of at least 1, at most the number of classes, as ?top_k=",
    ("header", "idempotency-key"): (
        "an Idempotency-Key header of 1 to 128 characters from A-Z, a-z, 0-9, '.', '_', ':' and '-'"
    ),
    (
        "path",
        "key",
    ): "a context key of 1 to 128 characters from A-Z, a-z, 0-9, '.', '_', ':' and '-'",
}
"""What to send instead, for the query parameters, headers and path parts the API reads."""


def _example_for(path: str) -> str:
    for prefix, example in _EXAMPLES.items():
        if path.startswith(prefix):
            return example
    return "a JSON body as described at /docs"


def _hint_for(request: Request, loc: tuple[int | str, ...]) -> str:
    """What to send instead, chosen by what failed: the body, a query parameter, a header or
    the path."""
    where = str(loc[0]) if loc else "body"
    if where == "body":
        return _example_for(request.url.path)
    name = str(loc[1]).lower() if len(loc) > 1 else ""
    return _PARAMETER_HINTS.get((where, name), f"a valid {where} value as described at /docs")


def _location(loc: tuple[int | str, ...]) -> str:
    if loc and loc[0] in ("query", "header", "path"):
        return f"{loc[0]} parameter {'.'.join(str(p) for p in loc[1:])}"
    parts = [str(p) for p in loc if p != "body"]
    text = ""
    for part in parts:
        text += f"[{part}]" if part.isdigit() else (f".{part}" if text else part)
    return text or "body"


def _validation_sentence(request: Request, exc: RequestValidationError) -> str:
    example = _example_for(request.url.path)
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        reason = str((first.get("ctx") or {}).get("error", ""))
        if reason.startswith(("the body is not valid", "the inflated body")):
            # msgpack or gzip bodies (service.api.json_route)
            return f"{reason}; send a JSON or msgpack object such as {example}"
        return f"the request body is not valid JSON; send a JSON object such as {example}"
    if first.get("type") == "missing" and tuple(first.get("loc", ())) == ("body",):
        return f"the request has no body; send a JSON object such as {example}"
    loc = tuple(first.get("loc", ()))
    location = _location(loc)
    message = str(first.get("msg", "is invalid")).rstrip(".")
    if first.get("type") == "finite_number":
        message = "must be a finite number, not NaN or Infinity"
    count = len(exc.errors())
    more = f" (and {count - 1} more problems)" if count > 1 else ""
    return f"{location}: {message}{more}; send {_hint_for(request, loc)}"


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> list[str]:
    """The methods some route answers on this path.

    Each method is tried against the app's routes as the router itself would match it, so
    routes inside included routers count too (FastAPI may keep them behind one router entry).
    """
    return [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in request.app.router.routes
        )
    ]


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
            allowed = _allowed_methods(request)
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

    @app.exception_handler(ModelUnhealthy)
    async def model_unhealthy(request: Request, exc: ModelUnhealthy) -> JSONResponse:
        return _problem(503, str(exc), {"Retry-After": "1"})

    @app.exception_handler(Unauthorized)
    async def unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
        return _problem(401, str(exc), {"WWW-Authenticate": "Bearer"})

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> JSONResponse:
        return _problem(403, str(exc))

    @app.exception_handler(UnknownPredictions)
    async def unknown_predictions(request: Request, exc: UnknownPredictions) -> JSONResponse:
        return _problem(404, str(exc))

    @app.exception_handler(ExpiredPredictions)
    async def expired_predictions(request: Request, exc: ExpiredPredictions) -> JSONResponse:
        return _problem(410, str(exc))

    @app.exception_handler(AlreadyLabelled)
    async def already_labelled(request: Request, exc: AlreadyLabelled) -> JSONResponse:
        return _problem(409, str(exc))

    @app.exception_handler(FeedbackUnavailable)
    async def feedback_down(request: Request, exc: FeedbackUnavailable) -> JSONResponse:
        return _problem(
            503,
            f"the feedback store is unreachable ({exc}); nothing was changed, retry later",
            {"Retry-After": "1"},
        )

    @app.exception_handler(RollbackFailed)
    async def no_such_version(request: Request, exc: RollbackFailed) -> JSONResponse:
        return _problem(404, f"{exc}; send one of the kept versions listed by GET /model")

    @app.exception_handler(TimeoutError)
    async def timed_out(request: Request, exc: TimeoutError) -> JSONResponse:
        return _problem(504, f"{exc}; retry later")

    @app.exception_handler(NotAppliedInTime)
    async def too_slow(request: Request, exc: NotAppliedInTime) -> JSONResponse:
        return _problem(504, str(exc))
