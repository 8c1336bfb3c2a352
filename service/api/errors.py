"""Maps failures to HTTP answers of the form {"detail": "<what is wrong; what to send>"}."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from service.api.auth import Forbidden, Unauthorized
from service.api.body_budget import TooManyValues
from service.api.payloads import PayloadError, TooManyRows
from service.checkpoints.rollback import RollbackFailed, RollbackNotDone, RollbackUnanswered
from service.checkpoints.transfer import ExportNotFound
from service.contexts.service import ContextNotFound, ShardNotServed
from service.feedback.service import (
    AlreadyLabelled,
    ExpiredPredictions,
    FeedbackUnavailable,
    UnknownPredictions,
)
from service.model.answers import ModelUnhealthy
from service.model.bank_rows import UnknownContext
from service.queue.base import IdempotencyConflict, QueueFull, QueueUnavailable
from service.registry.errors import (
    ContextConflict,
    ContextParameterTaken,
    InvalidContextParameters,
    ShardsFull,
)
from service.registry.store import RegistryUnavailable
from service.settings import Settings
from service.training.intake import NotAppliedInTime

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
        if reason.startswith(("the body ", "the inflated body")):
            # msgpack, gzip, deep or large bodies (service.api.body_budget, service.api.json_route)
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


def _problem(status: int, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _problem(422, _validation_sentence(request, exc))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own answers (unknown route, wrong method, unreadable body), in our words."""
    assert isinstance(exc, StarletteHTTPException)
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
        detail = f"{request.method} is not allowed on {request.url.path}; use {', '.join(allowed)}"
        headers = {"Allow": ", ".join(allowed)}
    return _problem(exc.status_code, detail, headers)


def _queue_backoff(settings: Settings) -> int:
    return settings.queue.retry_after_seconds


def _outage_backoff(settings: Settings) -> int:
    return settings.unavailable_retry_after_seconds


@dataclass(frozen=True)
class Answer:
    """How the API answers one failure the service layer raises.

    Attributes:
        failure: The exception type (its subclasses too, unless they have an answer of their
            own).
        status: The HTTP status.
        sentence: The detail, a format string of `exc`, the exception.
        headers: Headers sent as they are.
        retry_after: Where the `Retry-After` header's seconds come from, when one is sent.
    """

    failure: type[Exception]
    status: int
    sentence: str = "{exc}"
    headers: Mapping[str, str] = field(default_factory=dict)
    retry_after: Callable[[Settings], int] | None = None

    def respond(self, exc: Exception, settings: Settings) -> JSONResponse:
        headers = dict(self.headers)
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after(settings))
        return _problem(self.status, self.sentence.format(exc=exc), headers)


ANSWERS: tuple[Answer, ...] = (
    Answer(PayloadError, 422),
    Answer(TooManyRows, 413),
    Answer(TooManyValues, 413),
    Answer(InvalidContextParameters, 422),
    Answer(ContextNotFound, 404),
    Answer(UnknownContext, 404),
    Answer(ContextConflict, 409),
    Answer(ContextParameterTaken, 409),
    Answer(ShardsFull, 409),
    Answer(IdempotencyConflict, 422),
    Answer(
        QueueFull,
        429,
        "{exc}; retry after {exc.retry_after} s, or send smaller batches less often",
        retry_after=_queue_backoff,
    ),
    Answer(
        QueueUnavailable,
        503,
        "the train queue is unreachable ({exc}); nothing was queued, retry later",
        retry_after=_outage_backoff,
    ),
    Answer(
        RegistryUnavailable,
        503,
        "the context registry is unreachable; nothing was changed, retry later",
        retry_after=_outage_backoff,
    ),
    Answer(ModelUnhealthy, 503, retry_after=_outage_backoff),
    Answer(ShardNotServed, 503, retry_after=_outage_backoff),
    Answer(Unauthorized, 401, headers={"WWW-Authenticate": "Bearer"}),
    Answer(Forbidden, 403),
    Answer(UnknownPredictions, 404),
    Answer(ExportNotFound, 404),
    Answer(ExpiredPredictions, 410),
    Answer(AlreadyLabelled, 409),
    Answer(
        FeedbackUnavailable,
        503,
        "the feedback store is unreachable ({exc}); nothing was changed, retry later",
        retry_after=_outage_backoff,
    ),
    Answer(RollbackFailed, 404, "{exc}; send one of the kept versions listed by GET /model"),
    Answer(
        RollbackNotDone,
        503,
        "the rollback did not happen: {exc}; the model is unchanged, retry later",
        retry_after=_outage_backoff,
    ),
    Answer(
        RollbackUnanswered,
        504,
        "{exc}; GET /model shows whether it happened, look before retrying",
    ),
    Answer(TimeoutError, 504, "{exc}; retry later"),
    Answer(NotAppliedInTime, 504),
)
"""Every failure of the service layer that has an answer; anything else is a 500."""

_ANSWER_BY_FAILURE = {answer.failure: answer for answer in ANSWERS}


def answer_for(failure: Exception) -> Answer | None:
    """The answer to `failure`, found as the app's exception handlers find theirs: by its
    class, else by the nearest of its base classes that has one; None for a 500."""
    for kind in type(failure).__mro__:
        answer = _ANSWER_BY_FAILURE.get(kind)
        if answer is not None:
            return answer
    return None


def install_error_handlers(app: FastAPI, settings: Settings) -> None:
    """Registers the handlers of request validation, of Starlette's own errors and of each
    failure in `ANSWERS`."""
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for answer in ANSWERS:
        app.add_exception_handler(answer.failure, _handler(answer, settings))


def _handler(
    answer: Answer, settings: Settings
) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return answer.respond(exc, settings)

    return handle
