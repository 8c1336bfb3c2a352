"""Dependencies of the routes, as `Annotated` aliases: the runtime and the caller's scopes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.auth import Authenticator, Principal, Scope
from service.payloads import PayloadError
from service.runtime import Runtime

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)
_bearer = HTTPBearer(auto_error=False)


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def check_key_lengths(runtime: Runtime, keys: list[str]) -> None:
    """Raises PayloadError (422) for context keys longer than the configured limit."""
    limit = runtime.settings.limits.max_key_length
    for key in keys:
        if len(key) > limit:
            raise PayloadError(
                f"the context key {key[:20]!r}... is {len(key)} characters long; "
                f"send keys of at most {limit} characters"
            )


def _principal(scope: Scope | None) -> Callable[..., Awaitable[Principal]]:
    """A dependency that authenticates the caller and checks `scope` (None: any scope) and the
    path's context key against the caller's key prefix."""

    async def dependency(
        request: Request,
        runtime: RuntimeDep,
        api_key: Annotated[str | None, Security(_api_key_header)] = None,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
    ) -> Principal:
        authenticator: Authenticator = request.app.state.authenticator
        principal = authenticator.authenticate(api_key or (bearer.credentials if bearer else None))
        key = request.path_params.get("key")
        keys = [key] if isinstance(key, str) else []
        check_key_lengths(runtime, keys)
        principal.require(scope, keys)
        return principal

    return dependency


Reader = Annotated[Principal, Depends(_principal(None))]
Predictor = Annotated[Principal, Depends(_principal("predict"))]
Trainer = Annotated[Principal, Depends(_principal("train"))]
Admin = Annotated[Principal, Depends(_principal("admin"))]
