"""The predict batcher changes no answer, and really batches concurrent requests."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from psp_core.learner import TrainingConfig
from psp_core.models import ModelConfig
from service.api.requests_in_flight import REQUESTS_IN_FLIGHT
from service.app import create_app
from service.contexts.definition import ContextDefinition
from service.model.answers import InputsOverflow
from service.model.host import ModelHost
from service.runtime.supervisor import Supervisor
from service.serving.batcher import INLINE_MAX_ROWS, PredictBatcher
from service.testing.processes import wait_until
from tests.service.api.helpers import register


def _forward_passes() -> float:
    return REGISTRY.get_sample_value("psp_predict_batch_rows_count") or 0.0


def _host(contexts: int, input_scaling: str = "context") -> ModelHost:
    host = ModelHost(
        ModelConfig(kind="complex", hidden=(32,), input_scaling=input_scaling),
        TrainingConfig(),
        torch.device("cpu"),
    )
    host.add_contexts(ContextDefinition(i, i, None) for i in range(contexts))
    return host


def _recording_batcher(host: ModelHost) -> tuple[PredictBatcher, list[int]]:
    """A running batcher over `host`, and the rows of every pass of its collector (a request
    answered on the event loop makes none)."""
    collected: list[int] = []
    real_forward = host.forward

    def forward(inputs: np.ndarray, rows: torch.Tensor) -> tuple[np.ndarray, int]:
        collected.append(len(inputs))
        return real_forward(inputs, rows)

    host.forward = forward  # type: ignore[method-assign]
    batcher = PredictBatcher(host, max_rows=4096, max_delay_us=1000)
    batcher.start(Supervisor())
    return batcher, collected


async def test_concurrent_requests_share_forward_passes_and_keep_their_answers() -> None:
    host = _host(20)
    batcher = PredictBatcher(host, max_rows=4096, max_delay_us=5000)
    batcher.start(Supervisor())
    rng = np.random.default_rng(0)
    requests = [
        (rng.random((int(rng.integers(1, 5)), 64), dtype=np.float32), int(rng.integers(0, 20)))
        for _ in range(100)
    ]
    before = _forward_passes()
    results = await asyncio.gather(*(batcher.predict(x, i) for x, i in requests))
    passes = _forward_passes() - before
    await batcher.stop()
    assert passes < 20  # 100 requests, a handful of forward passes
    for (x, index), (probabilities, version) in zip(requests, results, strict=True):
        alone, _ = host.predict(x, np.array([index] * len(x)))
        assert probabilities.shape == alone.shape and version == 0
        assert np.array_equal(probabilities.argmax(1), alone.argmax(1))
        assert np.allclose(probabilities, alone, atol=1e-6)


async def test_oversized_batches_are_split_at_max_rows() -> None:
    host = _host(3)
    batcher = PredictBatcher(host, max_rows=10, max_delay_us=20000)
    batcher.start(Supervisor())
    before = _forward_passes()
    sizes = [6, 6, 6, 12]  # a request above max_rows still runs, alone
    results = await asyncio.gather(
        *(batcher.predict(np.ones((n, 64), np.float32), 1) for n in sizes)
    )
    await batcher.stop()
    assert [len(p) for p, _ in results] == sizes
    assert _forward_passes() - before == 4


async def test_a_lone_request_runs_at_once_without_waiting_for_company() -> None:
    host = _host(2)
    batcher = PredictBatcher(host, max_rows=4096, max_delay_us=2_000_000)
    batcher.start(Supervisor())
    # More rows than are answered on the event loop: the collector runs it.
    x = np.ones((INLINE_MAX_ROWS + 1, 64), np.float32)
    await batcher.predict(x, 0)  # warm-up
    await asyncio.sleep(0.01)
    started = time.perf_counter()
    probabilities, _ = await batcher.predict(x, 1)
    elapsed = time.perf_counter() - started
    await batcher.stop()
    assert elapsed < 0.5  # far below the 2 s maximum delay
    alone, _ = host.predict(x, np.array([1] * len(x)))
    assert np.allclose(probabilities, alone, atol=1e-6)


async def test_requests_arriving_during_a_pass_form_the_next_batch() -> None:
    host = _host(4)
    real_forward = host.forward
    batch_sizes: list[int] = []
    in_flight, released = threading.Event(), threading.Event()

    def forward(inputs: np.ndarray, rows: torch.Tensor) -> tuple[np.ndarray, int]:
        batch_sizes.append(len(inputs))
        in_flight.set()
        released.wait(10)  # a long forward pass, so that the others arrive during it
        return real_forward(inputs, rows)

    host.forward = forward  # type: ignore[method-assign]
    batcher = PredictBatcher(host, max_rows=4096, max_delay_us=1000)
    batcher.start(Supervisor())
    # Too many rows to be answered on the event loop: the first goes to the collector too.
    first_rows = INLINE_MAX_ROWS + 1
    first = asyncio.ensure_future(batcher.predict(np.ones((first_rows, 64), np.float32), 0))
    assert await asyncio.to_thread(in_flight.wait, 10)  # the first pass is now in flight
    later = [
        asyncio.ensure_future(batcher.predict(np.full((2, 64), i, np.float32), i))
        for i in range(1, 4)
    ]
    await asyncio.sleep(0)  # one turn of the event loop: the three queue behind the pass
    released.set()
    results = await asyncio.gather(first, *later)
    await batcher.stop()
    assert batch_sizes == [first_rows, 6]
    assert [len(p) for p, _ in results] == [first_rows, 2, 2, 2]


async def test_a_lone_small_request_is_answered_on_the_event_loop_unless_the_model_is_busy() -> (
    None
):
    host = _host(3)
    batcher, collected = _recording_batcher(host)
    x = np.full((2, 64), 0.5, np.float32)
    inline, _ = await batcher.predict(x, 2)
    assert collected == []  # no pass of the collector, no thread
    await asyncio.sleep(0.01)
    with host._lock:  # a training step holds the model: the request waits its turn
        waiting = asyncio.ensure_future(batcher.predict(x, 2))
        await asyncio.sleep(0.05)
        assert not waiting.done()
    queued, _ = await waiting
    # Another HTTP request in flight is company: the request goes to be batched.
    await asyncio.sleep(0.01)
    REQUESTS_IN_FLIGHT.enter()
    REQUESTS_IN_FLIGHT.enter()
    try:
        accompanied, _ = await batcher.predict(x, 2)
    finally:
        REQUESTS_IN_FLIGHT.leave()
        REQUESTS_IN_FLIGHT.leave()
    await batcher.stop()
    assert collected == [2, 2]
    assert np.array_equal(inline, queued) and np.array_equal(inline, accompanied)


async def test_requests_parsed_in_the_same_turn_are_batched_not_answered_one_by_one() -> None:
    """Under load the server parses many requests in one turn of the event loop; each task
    counts itself in flight only when it starts, so the first would find itself alone."""
    host = _host(8)
    batcher, collected = _recording_batcher(host)
    await asyncio.sleep(0.01)

    async def http_request(index: int) -> np.ndarray:
        REQUESTS_IN_FLIGHT.enter()  # what the metrics middleware does as a request starts
        try:
            probabilities, _ = await batcher.predict(np.full((1, 64), index, np.float32), index)
        finally:
            REQUESTS_IN_FLIGHT.leave()
        return probabilities

    answers = await asyncio.gather(*(http_request(i) for i in range(8)))
    await batcher.stop()
    assert collected == [8]  # one pass of the collector, none answered alone on the loop
    for index, probabilities in enumerate(answers):
        alone, _ = ModelHost.predict(host, np.full((1, 64), index, np.float32), np.array([index]))
        assert np.allclose(probabilities, alone, atol=1e-6)


def test_answers_over_http_are_the_same_alone_or_among_100_concurrent(
    make_settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with TestClient(create_app(make_settings())) as client:
        keys = [f"tenant-{i}" for i in range(10)]
        for key in keys:
            register(client, key)
        rng = np.random.default_rng(1)
        probe = {"inputs": rng.random((3, 64)).tolist()}
        alone = client.post("/predict/tenant-0", json=probe).json()

        def other(i: int) -> int:
            body = {"inputs": rng.random((2, 64)).tolist()}
            return client.post(f"/predict/{keys[i % 10]}", json=body).status_code

        # The batched passes wait until every thread has a request in flight, so that the
        # requests queued meanwhile must share passes whatever the timing of the threads.
        host = client.app.state.runtime.shards[0].host  # type: ignore[attr-defined]
        forward, crowd_arrived = host.forward, threading.Event()

        def forward_once_the_crowd_is_in(*args: Any) -> Any:
            crowd_arrived.wait(30)
            return forward(*args)

        monkeypatch.setattr(host, "forward", forward_once_the_crowd_is_in)
        before = _forward_passes()
        with ThreadPoolExecutor(16) as pool:
            others = [pool.submit(other, i) for i in range(100)]
            crowded = pool.submit(client.post, "/predict/tenant-0", json=probe)
            wait_until(lambda: REQUESTS_IN_FLIGHT.count >= 16, 30, what="16 requests in flight")
            crowd_arrived.set()
            statuses = [f.result() for f in others]
            among = crowded.result().json()
        assert statuses == [200] * 100
        # Fewer passes than requests: some of the 101 requests shared a forward pass.
        assert _forward_passes() - before < 101
        assert among["predictions"] == alone["predictions"]
        assert np.allclose(among["probabilities"], alone["probabilities"], atol=1e-6)


@pytest.mark.parametrize("input_scaling", ["none", "context"])
async def test_a_request_whose_rows_overflow_fails_alone_and_its_neighbours_are_answered(
    input_scaling: str,
) -> None:
    host = _host(4, input_scaling)
    batcher = PredictBatcher(host, max_rows=4096, max_delay_us=5000)
    batcher.start(Supervisor())
    normal = np.full((3, 64), 0.5, np.float32)
    extreme = np.full((2, 64), 3e38, np.float32)  # finite, but the forward pass overflows
    # Several rows each, so that all of them go to the collector and share its passes.
    requests = [(normal, 0), (extreme, 1), (normal, 2), (extreme, 3)] * 5
    answers = await asyncio.gather(
        *(batcher.predict(x, i) for x, i in requests), return_exceptions=True
    )
    await batcher.stop()
    for (x, index), answer in zip(requests, answers, strict=True):
        if x is extreme and input_scaling == "context":  # bounded: an answer like any other
            assert not isinstance(answer, BaseException), answer
            assert np.isfinite(answer[0]).all()
        elif x is extreme:
            assert isinstance(answer, InputsOverflow), answer
            assert "row 0" in str(answer) and "3e+38" in str(answer)
        else:
            assert not isinstance(answer, BaseException), answer
            probabilities, _ = answer
            alone, _ = host.predict(x, np.array([index] * len(x)))
            assert np.allclose(probabilities, alone, atol=1e-6)


async def test_a_lone_request_whose_rows_overflow_is_refused_as_its_own_fault() -> None:
    host = _host(1, input_scaling="none")
    batcher = PredictBatcher(host, max_rows=4096, max_delay_us=1000)
    batcher.start(Supervisor())
    await asyncio.sleep(0.01)
    try:
        for rows in (1, INLINE_MAX_ROWS + 1):  # on the event loop, and through the collector
            await asyncio.sleep(0.01)
            with pytest.raises(InputsOverflow):
                await batcher.predict(np.full((rows, 64), 3e38, np.float32), 0)
        assert host.healthy
    finally:
        await batcher.stop()
