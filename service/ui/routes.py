"""The operator's page under `/ui`: every context the caller may see, one page per context,
and the log-in form. Server-rendered HTML with inline SVG charts: no script runs and nothing
is fetched from anywhere else (the Content-Security-Policy says so to the browser).

The routes validate the request and check the caller; `service.ui.pages` gathers what is shown.
Every page says how long the server took in a `Server-Timing` header.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from service.api.auth import Forbidden, Principal, Unauthorized
from service.api.deps import KeyPath, RuntimeDep
from service.api.schemas import KEY_PREFIX_PATTERN
from service.contexts.service import ContextNotFound
from service.registry.overview import SortKey
from service.registry.store import RegistryUnavailable
from service.ui import access, pages

router = APIRouter(prefix="/ui", include_in_schema=False)

_TEMPLATES = Environment(
    loader=PackageLoader("service.ui", "templates"),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,
)
_SECURITY_HEADERS = {
    # Inline styles and SVG only: no script, no frame, no request to another origin.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
HISTORY_WINDOWS = (24, 168, 720, 2160)


@router.get("")
async def context_list(
    request: Request,
    runtime: RuntimeDep,
    sort: SortKey = "drift",
    order: Literal["asc", "desc"] = "desc",
    page: Annotated[int, Query(ge=1, le=10**9)] = 1,
    per_page: Annotated[int, Query(ge=1, le=500)] = 50,
    prefix: Annotated[str, Query(pattern=KEY_PREFIX_PATTERN)] = "",
) -> Response:
    """Every context the caller may see, sorted and paged, under the model's state."""
    started = time.perf_counter()
    caller = access.caller_of(request)
    if caller is None:
        return RedirectResponse("/ui/login", status_code=303)
    query = pages.ListQuery(sort, order == "desc", page, per_page, prefix)

    def link(**changes: Any) -> str:
        values = {
            "sort": query.sort,
            "order": "desc" if query.descending else "asc",
            "page": query.page,
            "per_page": query.per_page,
            "prefix": query.prefix,
        }
        values.update(changes)
        return "/ui?" + urlencode({k: v for k, v in values.items() if v != ""})

    try:
        shown = await pages.context_list(runtime, caller, query)
        panel = await pages.model_panel(runtime, caller)
    except Forbidden as err:
        return _error(request, caller, started, 403, "Not yours", str(err))
    except RegistryUnavailable:
        return _unavailable(request, caller, started)
    return _render(request, caller, started, "list.html", {**shown, "model": panel, "link": link})


@router.get("/contexts/{key}")
async def context_page(
    request: Request,
    key: KeyPath,
    runtime: RuntimeDep,
    hours: Annotated[int, Query(ge=1, le=max(HISTORY_WINDOWS))] = 168,
) -> Response:
    """One context: its curves, its drifts and how to call it."""
    started = time.perf_counter()
    caller = access.caller_of(request)
    if caller is None:
        return RedirectResponse("/ui/login", status_code=303)
    try:
        caller.require(None, [key])
        row = await runtime.contexts.get(key)
        base_url = str(request.base_url).rstrip("/")
        shown = await pages.context_detail(runtime, row, hours, base_url)
    except Forbidden as err:
        return _error(request, caller, started, 403, "Not yours", str(err))
    except ContextNotFound as err:
        return _error(request, caller, started, 404, "No such context", str(err))
    except RegistryUnavailable:
        return _unavailable(request, caller, started)
    return _render(request, caller, started, "context.html", shown)


@router.get("/login")
async def login_form(request: Request) -> Response:
    return _render(request, None, time.perf_counter(), "login.html", {"error": None})


@router.post("/login")
async def log_in(request: Request) -> Response:
    """Checks the key from the form and keeps it in the session's cookie."""
    started = time.perf_counter()
    form = parse_qs((await request.body()).decode("utf-8", errors="replace"))
    key = (form.get("key") or [""])[0].strip()
    try:
        access.authenticate(request, key or None)
    except Unauthorized as err:
        return _render(request, None, started, "login.html", {"error": str(err)}, status=401)
    response = RedirectResponse("/ui", status_code=303)
    access.remember(response, request, key)
    return response


@router.post("/logout")
async def log_out() -> Response:
    response = RedirectResponse("/ui/login", status_code=303)
    access.forget(response)
    return response


def _render(
    request: Request,
    caller: Principal | None,
    started: float,
    template: str,
    values: dict[str, Any],
    status: int = 200,
) -> HTMLResponse:
    html = _TEMPLATES.get_template(template).render(
        caller=caller,
        logged_in=access.COOKIE in request.cookies,
        ago=_ago,
        **values,
    )
    elapsed_ms = 1000 * (time.perf_counter() - started)
    headers = {**_SECURITY_HEADERS, "Server-Timing": f"app;dur={elapsed_ms:.1f}"}
    return HTMLResponse(html, status_code=status, headers=headers)


def _error(
    request: Request, caller: Principal, started: float, status: int, title: str, detail: str
) -> HTMLResponse:
    values = {"status": status, "title": title, "detail": detail}
    return _render(request, caller, started, "error.html", values, status=status)


def _unavailable(request: Request, caller: Principal, started: float) -> HTMLResponse:
    detail = "the registry database is unreachable; reload the page in a moment"
    return _error(request, caller, started, 503, "Registry unavailable", detail)


def _ago(moment: datetime | None) -> str:
    """`moment` as a short distance back from now: 12 s, 5 min, 3 h, 2 d."""
    if moment is None:
        return "never"
    seconds = max(0.0, (datetime.now(UTC) - moment).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} s ago"
