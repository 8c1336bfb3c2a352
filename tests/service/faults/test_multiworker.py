"""`psp serve --workers 2` (PSP_ROLE=api): both processes serve, and /metrics adds them up."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from service.testing.processes import psp_serve, running, wait_until

# Every test here starts real `psp` processes; `make test-fast` leaves them out.
pytestmark = pytest.mark.real_process


def _processes_with_metrics(directory: Path) -> set[str]:
    """The pids that have written metrics files (each process writes its own)."""
    return {m.group(1) for p in directory.iterdir() if (m := re.search(r"_(\d+)\.db$", p.name))}


def test_two_api_processes_share_one_metrics_view(base_env, tmp_path) -> None:
    directory = tmp_path / "prometheus"
    env = {**base_env, "PSP_ROLE": "api", "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    with running(psp_serve("api", env, tmp_path, "--workers", "2")) as (api,):
        base = api.base_url
        # /healthz answers once one process is up; on a busy machine the other can take
        # seconds longer, and would then see none of the requests below.
        wait_until(lambda: len(_processes_with_metrics(directory)) == 2, 60, what="both up")
        assert httpx.post(f"{base}/contexts", json={"key": "t"}, timeout=10).status_code == 201
        with httpx.Client(base_url=base, timeout=10) as client:
            for _ in range(40):  # new connections, so both processes take some
                client.headers["Connection"] = "close"
                assert client.post("/predict/t", json={"inputs": [[0.5] * 64]}).status_code == 200
        assert len(_processes_with_metrics(directory)) == 2
        text = httpx.get(f"{base}/metrics", timeout=10).text
        total = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("psp_http_requests_total{") and 'handler="/predict/{key}"' in line
        )
        assert total == 40
