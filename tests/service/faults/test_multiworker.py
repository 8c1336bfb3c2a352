"""`psp serve --workers 2` (PSP_ROLE=api): both processes serve, and /metrics adds them up."""

from __future__ import annotations

import re

import httpx

from service.testing.processes import psp_serve, running


def test_two_api_processes_share_one_metrics_view(base_env, tmp_path) -> None:
    env = {**base_env, "PSP_ROLE": "api", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus")}
    with running(psp_serve("api", env, tmp_path, "--workers", "2")) as (api,):
        base = api.base_url
        assert httpx.post(f"{base}/contexts", json={"key": "t"}, timeout=10).status_code == 201
        with httpx.Client(base_url=base, timeout=10) as client:
            for _ in range(40):  # new connections, so both processes take some
                client.headers["Connection"] = "close"
                assert client.post("/predict/t", json={"inputs": [[0.5] * 64]}).status_code == 200
        files = sorted(p.name for p in (tmp_path / "prometheus").iterdir())
        assert len({re.sub(r"_\d+\.db$", "", f) for f in files}) >= 1
        assert len({m.group(1) for f in files if (m := re.search(r"_(\d+)\.db$", f))}) == 2
        text = httpx.get(f"{base}/metrics", timeout=10).text
        total = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("psp_http_requests_total{") and 'handler="/predict/{key}"' in line
        )
        assert total == 40
