"""HttpMetrics: requests counted and timed by route template, with bounded labels."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.service.api.helpers import register, rows


def _samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    families = text_string_to_metric_families(client.get("/metrics").text)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families
        if family.name.startswith("psp_http")
        for sample in family.samples
    }


def _count(samples: dict, handler: str, method: str, status: str) -> float:
    labels = (("handler", handler), ("method", method), ("status", status))
    return samples.get(("psp_http_requests_total", labels), 0.0)


def _timed(samples: dict, handler: str, method: str) -> float:
    labels = (("handler", handler), ("method", method))
    return samples.get(("psp_http_request_duration_seconds_count", labels), 0.0)


def test_requests_are_counted_by_template_method_and_status(client: TestClient) -> None:
    register(client, "tenant-a")
    before = _samples(client)
    for key in ("tenant-a", "tenant-a", "tenant-b"):  # tenant-b is not registered: 404
        client.post(f"/predict/{key}", json={"inputs": rows(1)})
    client.get("/no/such/path")
    client.post("/predict/tenant-a", content=b"x" * (17 * 1024 * 1024))  # over the 16 MiB limit
    after = _samples(client)

    def added(handler: str, method: str, status: str) -> float:
        return _count(after, handler, method, status) - _count(before, handler, method, status)

    assert added("/predict/{key}", "POST", "200") == 2
    assert added("/predict/{key}", "POST", "404") == 1
    assert added("none", "GET", "404") == 1
    # The size limit answers before routing, so the request has no route template.
    assert added("none", "POST", "413") == 1
    assert _timed(after, "/predict/{key}", "POST") - _timed(before, "/predict/{key}", "POST") == 3


def test_metrics_scrapes_and_keys_are_not_labels(client: TestClient) -> None:
    register(client, "secret-tenant")
    client.post("/predict/secret-tenant", json={"inputs": rows(1)})
    for _ in range(3):
        client.get("/metrics")
    samples = _samples(client)
    handlers = {dict(labels).get("handler") for _, labels in samples}
    assert "/metrics" not in handlers
    assert all("secret-tenant" not in str(labels) for _, labels in samples)
    assert "/contexts" in handlers and "/predict/{key}" in handlers


def test_methods_outside_http_are_labelled_other(client: TestClient) -> None:
    before = _samples(client)
    for method in ("BREW", "WHEN", "BREW"):
        client.request(method, "/contexts")
    after = _samples(client)
    methods = {dict(labels).get("method") for _, labels in after}
    assert not methods & {"BREW", "WHEN"}
    added = _timed(after, "none", "other") - _timed(before, "none", "other")
    added += _timed(after, "/contexts", "other") - _timed(before, "/contexts", "other")
    assert added == 3
