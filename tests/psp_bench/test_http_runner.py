"""The HTTP runner against the real service, an in-process app on a SQLite registry."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from psp_bench.continual import run_method
from psp_bench.http_runner import BenchHTTPError, HttpRunner
from psp_bench.methods import Method
from psp_bench.runners import PSPRunner
from psp_bench.streams import make_stream
from psp_core import ContextSpec, ModelConfig, TrainingConfig
from service.api.auth import issue_key
from service.app import create_app
from tests.service.api.helpers import sqlite_settings

# The model of `sqlite_settings`; the service trains with psp_core's default TrainingConfig.
CONFIG = ModelConfig(kind="complex", input_shape=(64,), hidden=(32,), seed=0)
TRAINING = TrainingConfig()
ServiceFactory = Callable[..., TestClient]


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[ServiceFactory]:
    """Starts the app (trainer included) on settings overridden by the keyword arguments."""
    with ExitStack() as running:

        def start(**overrides: Any) -> TestClient:
            app = create_app(sqlite_settings(tmp_path, **overrides))
            return running.enter_context(TestClient(app))

        yield start


class BusyFirst(httpx.BaseTransport):
    """Answers the first `busy` requests as a full queue does (429, Retry-After), then passes
    every request on to `inner`; records what was asked."""

    def __init__(self, inner: httpx.BaseTransport, busy: int) -> None:
        self.inner = inner
        self.busy = busy
        self.log: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.log.append(f"{request.method} {request.url.path}")
        if self.busy:
            self.busy -= 1
            return httpx.Response(429, headers={"Retry-After": "0"}, json={"detail": "full"})
        return self.inner.handle_request(request)


def _transport(service: TestClient) -> httpx.BaseTransport:
    # A TestClient is an httpx.Client whose transport runs each request on the app's event loop.
    transport: httpx.BaseTransport = service._transport
    return transport


def _runner(service: TestClient, kind: str = "complex", **options: Any) -> HttpRunner:
    options.setdefault("transport", _transport(service))
    return HttpRunner(str(service.base_url), expected_kind=kind, key_prefix="run-", **options)


def _batch(seed: int, rows: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(rows, 64, generator=generator), torch.randint(
        0, 10, (rows,), generator=generator
    )


def test_the_http_runner_measures_what_the_in_process_runner_measures(
    start_service: ServiceFactory,
) -> None:
    service = start_service(replay={"rows": 0})
    runner = _runner(service)
    assert runner.check_model(CONFIG, replay=False) == []
    stream = make_stream("permuted-digits", tasks=2, steps_per_task=20, seed=0)
    method = Method.parse("complex")
    over_http = run_method(stream, method, runner, eval_every=10)
    in_process = run_method(stream, method, PSPRunner(CONFIG, TRAINING), eval_every=10)
    assert over_http == in_process
    contexts = service.get("/contexts").json()["items"]
    assert sorted(context["key"] for context in contexts) == ["run-task-0", "run-task-1"]
    assert service.get("/model").json()["model_version"] == stream.total_steps
    assert runner.refused_steps == 0


def test_the_http_runner_waits_out_a_full_queue(start_service: ServiceFactory) -> None:
    service = start_service()
    busy = BusyFirst(_transport(service), busy=2)
    runner = _runner(service, transport=busy)
    runner.register("task-0", ContextSpec(seed=0))
    assert busy.log == ["POST /contexts"] * 3
    runner.send("task-0", *_batch(4, rows=32), batch_size=32, wait=True)
    assert service.get("/model").json()["model_version"] == 1


def test_the_http_runner_counts_the_steps_the_service_refused(
    start_service: ServiceFactory,
) -> None:
    # Without input scaling nothing bounds the rows, so the overflowing step is refused.
    service = start_service(
        model={"kind": "complex", "input_shape": [64], "hidden": [32], "input_scaling": "none"}
    )
    runner = _runner(service)
    runner.register("task-0", ContextSpec(seed=11))
    # Rows of +-3.4e38 with random signs: some hidden unit overflows, so the step is refused.
    signs = np.random.default_rng(0).choice([-3.4e38, 3.4e38], size=(32, 64))
    huge = torch.tensor(signs, dtype=torch.float32)
    runner.send("task-0", huge, torch.ones(32, dtype=torch.long), batch_size=32, wait=True)
    assert runner.refused_steps == 1
    runner.send("task-0", *_batch(5, rows=32), batch_size=32, wait=True)
    runner.train("task-0", *_batch(6))
    assert runner.refused_steps == 1
    assert service.get("/model").json()["model_version"] == 2


def test_the_http_runner_checks_the_service_model(start_service: ServiceFactory) -> None:
    runner = _runner(start_service())
    assert runner.check_model(CONFIG, replay=True) == []
    runner.register("task-0", ContextSpec(seed=0))
    runner.train("task-0", *_batch(6))
    warnings = runner.check_model(replace(CONFIG, seed=3))
    assert len(warnings) == 2
    assert "already applied 1 steps" in warnings[0] and "seed is 0 and --seed is 3" in warnings[1]
    with pytest.raises(BenchHTTPError, match=r"hidden=\[32\] \(the run needs \[256, 256\]\)"):
        runner.check_model(replace(CONFIG, hidden=(256, 256)))
    with pytest.raises(BenchHTTPError, match="the service replays past rows"):
        runner.check_model(CONFIG, replay=False)


def test_the_http_runner_sends_the_api_key(start_service: ServiceFactory) -> None:
    key, spec = issue_key(["admin", "predict", "train"], name="bench")
    service = start_service(api_keys=[spec.model_dump()])
    runner = HttpRunner(
        str(service.base_url), expected_kind="complex", api_key=key, transport=_transport(service)
    )
    assert runner.key_prefix.startswith("bench-") and len(runner.key_prefix) == 15
    runner.register("task-0", ContextSpec(seed=0))
    assert runner.predict("task-0", _batch(7)[0]).shape == (16,)
    with pytest.raises(BenchHTTPError, match="answered 401"):
        _runner(service).register("task-0", ContextSpec(seed=0))


def test_the_http_runner_explains_refusals(start_service: ServiceFactory) -> None:
    service = start_service(model={"kind": "binary", "input_shape": [64], "hidden": [32]})
    runner = _runner(service, kind="complex")
    with pytest.raises(BenchHTTPError, match="PSP_MODEL__KIND=complex"):
        runner.register("task-0", ContextSpec(seed=0))
    with pytest.raises(BenchHTTPError, match="answered 404: no context has the key 'run-task-9'"):
        runner.predict("task-9", torch.zeros(2, 64))
