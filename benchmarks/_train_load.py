"""One server's training throughput under P5's train load: the clients' POST /train, the
trainer's counters read from /metrics around the measured window, and the drain after it."""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from dataclasses import dataclass
from typing import NamedTuple

import httpx
from _cpu_usage import cpu_seconds
from _harness import percentile
from _load import Operation, Recorder, drive
from _service_requests import JSON_HEADERS
from _serving import MAX_REQUESTS_PER_SECOND
from prometheus_client.parser import text_string_to_metric_families

from service.testing.processes import ServerProcess

DRAIN_TIMEOUT_S = 180.0
"""Longest wait for the trainer to apply what was accepted, after the train load stops."""


@dataclass
class TrainFigures:
    """One service's training throughput.

    Attributes:
        applied_rate: Examples/s the trainer applied (psp_trainer_examples_total) in the
            measured window, while the clients kept posting.
        accepted_rate: Examples/s POST /train accepted (psp_train_accepted_examples_total) in
            the same window.
        end_to_end_rate: Every accepted example ÷ the time from the first POST to the trainer
            having applied the last one (the queue drained).
        server_cpu_ms_per_1000: CPU milliseconds of the server process (plus redis-server when
            it carries the queue) per 1000 examples, over the whole run and drain.
        throttled: 429 answers (queue full), honoured by waiting Retry-After.
        failed: Other non-202 answers and transport errors.
    """

    applied_rate: float
    accepted_rate: float
    end_to_end_rate: float
    examples: float
    drain_seconds: float
    server_cpu_ms_per_1000: float
    throttled: int
    failed: int
    p50_s: float
    p99_s: float
    others: str = ""


class Counters(NamedTuple):
    """The training counters at one moment."""

    at: float  # perf_counter()
    applied: float  # examples the trainer applied
    accepted: float  # examples POST /train accepted


async def _counters(client: httpx.AsyncClient, trainer_metrics_urls: list[str]) -> Counters:
    """Accepted from the API's /metrics, applied from the trainers' (summed over every shard;
    the API's own /metrics unless the roles are split)."""

    async def values(url: str) -> dict[str, float]:
        text = (await client.get(url)).text
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
        return totals

    api = await values("/metrics")
    if trainer_metrics_urls == ["/metrics"]:
        trainers = [api]
    else:
        trainers = [await values(url) for url in trainer_metrics_urls]
    return Counters(
        time.perf_counter(),
        sum(trainer.get("psp_trainer_examples_total", 0.0) for trainer in trainers),
        api.get("psp_train_accepted_examples_total", 0.0),
    )


def _train_operation(
    recorder: Recorder, keys: list[str], bodies: list[bytes], clients: int, deadline: float
) -> Operation:
    """A train client's request: a random body for a random key. A 429 waits its Retry-After,
    but not past `deadline`."""
    rngs = [random.Random(n) for n in range(clients)]

    async def operation(client: httpx.AsyncClient, number: int) -> None:
        rng = rngs[number]
        url = f"/train/{keys[rng.randrange(len(keys))]}"
        body = bodies[rng.randrange(len(bodies))]
        response = await recorder.send(
            client, "train", "POST", url, content=body, headers=JSON_HEADERS
        )
        if response is not None and response.status_code == 429:
            pause = float(response.headers.get("retry-after", "1"))
            await asyncio.sleep(min(pause, max(0.0, deadline - time.perf_counter())))

    return operation


async def train_phase(
    server: ServerProcess,
    keys: list[str],
    bodies: list[bytes],
    args: argparse.Namespace,
    cpu_pids: list[int],
    trainer_metrics_urls: list[str],
) -> TrainFigures:
    """Streams train requests for warm-up + measured seconds, reads the trainer's counters at
    the start and the end of the measured window, then waits for the queue to drain."""
    recorder = Recorder()
    total = args.warmup + args.seconds
    operation = _train_operation(
        recorder, keys, bodies, args.train_clients, time.perf_counter() + total
    )
    bound = int(total * MAX_REQUESTS_PER_SECOND) + 1
    cpu_before = sum(cpu_seconds(pid) for pid in cpu_pids)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        first = await _counters(client, trainer_metrics_urls)
        load = asyncio.create_task(
            drive(
                server.base_url,
                operation,
                clients=args.train_clients,
                seconds=total,
                max_operations=bound,
            )
        )
        await asyncio.sleep(args.warmup)
        start = await _counters(client, trainer_metrics_urls)
        latencies_before = len(recorder.latencies["train"])
        await asyncio.sleep(args.seconds)
        end = await _counters(client, trainer_metrics_urls)
        await load
        done, drain_seconds = await _drained(client, trainer_metrics_urls)
    cpu_used = sum(cpu_seconds(pid) for pid in cpu_pids) - cpu_before
    return _train_figures(
        recorder,
        recorder.latencies["train"][latencies_before:],
        Readings(first, start, end, done),
        drain_seconds,
        cpu_used,
    )


async def _drained(
    client: httpx.AsyncClient, trainer_metrics_urls: list[str]
) -> tuple[Counters, float]:
    """The counters once the trainer has applied all it accepted (or `DRAIN_TIMEOUT_S` after
    the load stopped), and the seconds that took."""
    done = await _counters(client, trainer_metrics_urls)
    load_end = done.at
    while done.applied < done.accepted and done.at - load_end < DRAIN_TIMEOUT_S:
        await asyncio.sleep(0.05)
        done = await _counters(client, trainer_metrics_urls)
    return done, done.at - load_end


class Readings(NamedTuple):
    """The counters before the load, at the start and the end of the measured window, and
    once the queue drained."""

    first: Counters
    start: Counters
    end: Counters
    done: Counters


def _train_figures(
    recorder: Recorder,
    measured: list[float],
    readings: Readings,
    drain_seconds: float,
    cpu_used: float,
) -> TrainFigures:
    """The figures of one path from its recorder, the latencies of its measured window, its
    counters and the CPU seconds its processes used."""
    first, start, end, done = readings
    window = end.at - start.at
    examples = done.accepted - first.accepted
    return TrainFigures(
        applied_rate=(end.applied - start.applied) / window,
        accepted_rate=(end.accepted - start.accepted) / window,
        end_to_end_rate=(done.applied - first.applied) / (done.at - first.at),
        examples=examples,
        drain_seconds=drain_seconds,
        server_cpu_ms_per_1000=cpu_used / examples * 1e6 if examples else float("nan"),
        throttled=recorder.count("train", 429),
        failed=recorder.non_ok("train", ok=(202, 429)),
        p50_s=percentile(measured, 50),
        p99_s=percentile(measured, 99),
    )
