"""The OpenAPI document declares the API-key schemes exactly where a key is checked."""

from __future__ import annotations

from fastapi.testclient import TestClient

from service.api.openapi import SECURITY_REQUIREMENT, SECURITY_SCHEMES


def test_guarded_operations_declare_both_key_schemes(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"] == SECURITY_SCHEMES
    security = {
        (method.upper(), path): operation.get("security")
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
    }
    guarded = {
        ("POST", "/contexts"),
        ("GET", "/contexts"),
        ("POST", "/contexts:batch"),
        ("GET", "/contexts/{key}"),
        ("DELETE", "/contexts/{key}"),
        ("POST", "/train/{key}"),
        ("POST", "/predict/{key}"),
        ("GET", "/model"),
        ("POST", "/model/rollback"),
    }
    assert guarded <= set(security)
    assert all(security[operation] == SECURITY_REQUIREMENT for operation in guarded)
    assert security[("GET", "/healthz")] is None and security[("GET", "/readyz")] is None
    assert SECURITY_REQUIREMENT == [{"APIKeyHeader": []}, {"HTTPBearer": []}]


def test_msgpack_bodies_are_declared_beside_json(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()

    def media_types(path: str) -> list[str]:
        return sorted(schema["paths"][path]["post"]["requestBody"]["content"])

    for path in ("/train/{key}", "/predict/{key}", "/predict", "/feedback/{key}", "/contexts"):
        assert media_types(path) == ["application/json", "application/msgpack"], path
    assert media_types("/v2/models/{key}/infer") == ["application/json"]
    infer = schema["paths"]["/v2/models/{key}/infer"]["post"]["requestBody"]["content"]
    assert "inputs" in infer["application/json"]["schema"]["required"]
