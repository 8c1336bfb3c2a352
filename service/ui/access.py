"""Who is looking at the page, and the login that lets a browser show its API key.

A browser cannot add an `Authorization` header to a link it follows, so the login form puts the
key in a cookie: HttpOnly (no script reads it; the page runs none anyway), SameSite=Strict (no
other site's page sends it) and limited to `/ui`, for the browser's session only. Every request
authenticates the key again with the service's own `Authenticator`, so a revoked key stops
working here as everywhere. A request that sends the key as a header (`X-API-Key` or
`Authorization: Bearer`) needs no cookie. While the service runs without keys, no login is
asked for.
"""

from __future__ import annotations

from fastapi import Request, Response

from service.api.auth import Authenticator, Principal, Unauthorized
from service.api.deps import presented_key

COOKIE = "psp_ui_key"
PATH = "/ui"


def caller_of(request: Request) -> Principal | None:
    """The caller's principal, or None when no valid key came with the request."""
    try:
        return authenticate(request, presented_key(request) or request.cookies.get(COOKIE))
    except Unauthorized:
        return None


def authenticate(request: Request, key: str | None) -> Principal:
    """The principal of `key` (any scope may read the page).

    Raises:
        Unauthorized: Keys are required and `key` is missing or not valid.
    """
    authenticator: Authenticator = request.app.state.authenticator
    return authenticator.authenticate(key)


def remember(response: Response, request: Request, key: str) -> None:
    """Sets the login cookie for the rest of the browser's session."""
    response.set_cookie(
        COOKIE,
        key,
        path=PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def forget(response: Response) -> None:
    """Clears the login cookie."""
    response.delete_cookie(COOKIE, path=PATH, httponly=True, samesite="strict")
