"""Dependencies of the routes, as `Annotated` aliases: the runtime, the caller's scopes and the
context key in the path."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Path, Request

from service.api.auth import Authenticator, Principal, Scope
from service.api.payloads import PayloadError
from service.api.schemas import KEY_PATTERN
from service.runtime.runtime import Runtime


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
KeyPath = Annotated[str, Path(pattern=KEY_PATTERN)]


def check_context_keys(
    runtime: Runtime, caller: Principal, scope: Scope | None, keys: list[str]
) -> None:
    """Raises PayloadError (422) for a context key longer than the configured limit, then
    Forbidden (403) unless the caller has `scope` and owns every key."""
    limit = runtime.settings.limits.max_key_length
    for key in keys:
        if len(key) > limit:
            raise PayloadError(
                f"the context key {key[:20]!r}... is {len(key)} characters long; "
                f"send keys of at most {limit} characters"
            )
    caller.require(scope, keys)


def presented_key(request: Request) -> str | None:
    """The API key from `X-API-Key`, or else from `Authorization: Bearer <key>`.

    The OpenAPI document declares both schemes (`service.api.openapi`).
    """
    api_key = request.headers.get("x-api-key")
    if api_key:
        return api_key
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None


def _principal(scope: Scope | None) -> Callable[..., Awaitable[Principal]]:
    """A dependency that authenticates the caller and checks `scope` (None: any scope) and the
    path's context key against the caller's key prefix."""

    async def dependency(request: Request) -> Principal:
        authenticator: Authenticator = request.app.state.authenticator
        principal = authenticator.authenticate(presented_key(request))
        key = request.path_params.get("key")
        keys = [key] if isinstance(key, str) else []
        check_context_keys(request.app.state.runtime, principal, scope, keys)
        return principal

    return dependency


# The authenticated caller, by the scope its API key must hold. These are roles of callers,
# not components: a `TrainingCaller` may queue rows, which
# `service.training.trainer.Trainer` learns.
Reader = Annotated[Principal, Depends(_principal(None))]
Predictor = Annotated[Principal, Depends(_principal("predict"))]
TrainingCaller = Annotated[Principal, Depends(_principal("train"))]
Admin = Annotated[Principal, Depends(_principal("admin"))]
