"""The OpenAPI document, with the API-key schemes declared on every guarded operation and the
msgpack bodies beside the JSON ones.

Keys are read from the headers by a plain dependency (`service.api.deps`) rather than through
FastAPI's `Security` classes, which re-resolve scopes on every request; the schemes are
therefore declared here instead. The routes of `BoundedBodyRoute` read
`application/msgpack` bodies as well as JSON ones (`service.api.json_route`), which FastAPI
cannot know; they are declared here too.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.api.json_route import MSGPACK, BoundedBodyRoute
from service.api.routes import RESOURCE_ROUTERS

SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "APIKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "HTTPBearer": {"type": "http", "scheme": "bearer"},
}
# Either header will do.
SECURITY_REQUIREMENT: list[dict[str, list[str]]] = [{name: []} for name in SECURITY_SCHEMES]


def install_openapi(app: FastAPI) -> None:
    """Makes `app.openapi()` declare the key schemes on each operation that can answer 401."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
        for operations in schema["paths"].values():
            for operation in operations.values():
                if "401" in operation.get("responses", {}):
                    operation["security"] = SECURITY_REQUIREMENT
        _declare_msgpack_bodies(schema)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _declare_msgpack_bodies(schema: dict[str, Any]) -> None:
    """Adds `application/msgpack`, with the JSON body's schema, to each body of a route that
    reads both."""
    routes = [route for router in RESOURCE_ROUTERS for route in router.routes]
    for route in routes:
        if not isinstance(route, BoundedBodyRoute):
            continue
        for method in route.methods or ():
            operation = schema["paths"].get(route.path_format, {}).get(method.lower(), {})
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                content[MSGPACK.decode()] = content["application/json"]
