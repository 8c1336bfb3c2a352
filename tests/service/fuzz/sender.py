"""Sends one generated request to the live app and checks what every answer must satisfy."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from httpx import Response

from service.api.auth import issue_key
from tests.service.fuzz.strategies import encode
from tests.service.fuzz.tally import record

ADMIN, ADMIN_SPEC = issue_key(["admin", "predict", "train"])
TENANT, TENANT_SPEC = issue_key(["admin", "predict", "train"], key_prefix="t-")
READER, READER_SPEC = issue_key(["predict"])
KEY_SPECS = [ADMIN_SPEC, TENANT_SPEC, READER_SPEC]
CALLERS = {
    "admin": {"X-API-Key": ADMIN},
    "tenant": {"Authorization": f"Bearer {TENANT}"},
    "reader": {"X-API-Key": READER},
    "none": {},
    "wrong": {"X-API-Key": "psp_0000000000000000_wrong"},
}


class Sender:
    """Sends requests to the app behind `client` and checks each answer: below 500; an error
    is `{"detail": "<sentence>"}` and leaves the bank's rows and the queued entries alone."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        runtime = client.app.state.runtime  # type: ignore[attr-defined]
        self.host, self.queue = runtime.shards[0].host, runtime.shards[0].queue
        if not hasattr(self.queue, "fuzz_queued"):
            self._count_queued_entries()

    def _count_queued_entries(self) -> None:
        queue, enqueue = self.queue, self.queue.enqueue

        async def counted(*args: Any, **kwargs: Any) -> Any:
            queued = await enqueue(*args, **kwargs)
            queue.fuzz_queued += 1
            return queued

        queue.enqueue, queue.fuzz_queued = counted, 0

    def effects(self) -> tuple[int, int]:
        """What a rejected request must leave alone: the bank's rows and the queued entries."""
        return self.host.context_count, self.queue.fuzz_queued

    def send(
        self,
        method: str,
        path: str,
        caller: str = "admin",
        *,
        body: Any = None,
        encoding: str = "json",
        raw: bytes = b"",
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """Sends `body` encoded as `encoding` (or `raw` for "bytes") as `caller`."""
        all_headers = {**CALLERS[caller], **(headers or {})}
        content = None
        if body is not None or encoding == "bytes":
            content, content_headers = encode(body, encoding, raw)
            all_headers = {**content_headers, **all_headers}
        before = self.effects()
        response = self.client.request(
            method, path, content=content, headers=all_headers, params=params
        )
        record(method, path, response)
        assert response.status_code < 500, f"{method} {path}: {response.text[:300]}"
        if response.status_code >= 400:
            detail = response.json()["detail"]
            assert isinstance(detail, str) and detail, response.text
            if response.status_code != 504:  # a wait that ran out: the batch is queued
                assert self.effects() == before, f"{method} {path} {response.status_code}"
        return response
