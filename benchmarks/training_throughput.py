"""Training throughput (P5) of the real `psp serve` over real HTTP on loopback, end to end.

`--train-clients` clients POST /train (wait=false) batches of `--train-rows` rows to random
contexts; the figure is the trainer's applied rate, d(psp_trainer_examples_total)/dt from
/metrics over the measured window, for the in-process queue and Redis (role all), and for Redis
with the roles split (`psp serve` with PSP_ROLE=api beside `psp worker`), ÷ the raw psp_core
loop (`OnlineLearner.step` on minibatches of the trainer's size, in this process, no HTTP).
Goal >= 0.7.

The load generator runs in this process and shares the machine's cores with the servers.

Run: `python benchmarks/training_throughput.py [--seconds 15] [--contexts 1000]
[--train-clients 16] [--json PATH]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from _harness import (
    JSON_HEADERS,
    REDIS_URL,
    CpuWatch,
    Recorder,
    cpu_seconds,
    drive,
    find_pids,
    load_average,
    ms,
    percentile,
    print_table,
    register_contexts,
    run_async,
    throwaway_redis_prefix,
)
from _serving import (
    MAX_REQUESTS_PER_SECOND,
    add_load_options,
    add_service_options,
    run_benchmark,
    service_env,
)
from bare_endpoint import context_key
from prometheus_client.parser import text_string_to_metric_families

from psp_core import ContextSpec, ModelConfig, OnlineLearner, TrainingConfig, build_model
from service.testing.processes import ServerProcess, psp_serve, psp_worker, running

DRAIN_TIMEOUT_S = 180.0
"""Longest wait for the trainer to apply what was accepted, after the train load stops."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_load_options(parser, "path")
    parser.add_argument("--train-clients", type=int, default=16, help="concurrent train clients")
    parser.add_argument("--train-rows", type=int, default=32, help="rows per train request")
    add_service_options(parser)
    return parser.parse_args(argv)


@dataclass
class RawFigures:
    """The plain psp_core loop: examples/s and CPU milliseconds per 1000 examples."""

    rate: float
    cpu_ms_per_1000: float


def raw_training_rate(args: argparse.Namespace, seconds: float) -> RawFigures:
    """The plain psp_core loop: `OnlineLearner.step` on minibatches of 32 rows mixed over
    `--contexts` contexts, the model of the same shape and `--torch-threads`, no HTTP, no queue."""
    config = ModelConfig(kind=args.kind, input_shape=(args.input,), hidden=tuple(args.hidden))
    model = build_model(config)
    model.bank.extend([ContextSpec(seed=n) for n in range(args.contexts)])
    learner = OnlineLearner(model, TrainingConfig())
    threads = torch.get_num_threads()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    try:
        return _step_loop(learner, args, seconds)
    finally:
        torch.set_num_threads(threads)


def _step_loop(learner: OnlineLearner, args: argparse.Namespace, seconds: float) -> RawFigures:
    """Runs `learner.step` on 32-row minibatches for `seconds`."""
    generator = torch.Generator().manual_seed(0)
    batches = [
        (
            torch.rand(32, args.input, generator=generator),
            torch.randint(0, args.contexts, (32,), generator=generator),
            torch.randint(0, 10, (32,), generator=generator),
        )
        for _ in range(64)
    ]
    for x, index, y in batches[:8]:  # warm-up
        learner.step(x, index, y)
    examples, began, cpu = 0, time.perf_counter(), cpu_seconds(os.getpid())
    while time.perf_counter() - began < seconds:
        x, index, y = batches[examples // 32 % len(batches)]
        learner.step(x, index, y)
        examples += 32
    used = cpu_seconds(os.getpid()) - cpu
    return RawFigures(examples / (time.perf_counter() - began), used / examples * 1e6)


def train_bodies(rng: np.random.Generator, count: int, rows: int, width: int) -> list[bytes]:
    """Pre-encoded train bodies of `rows` random rows and labels."""
    return [
        json.dumps(
            {
                "inputs": rng.random((rows, width)).round(4).tolist(),
                "labels": rng.integers(0, 10, rows).tolist(),
            }
        ).encode()
        for _ in range(count)
    ]


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


async def _counters(
    client: httpx.AsyncClient, trainer_metrics_url: str
) -> tuple[float, float, float]:
    """(perf_counter, examples applied, examples accepted): accepted from the API's /metrics,
    applied from the trainer's (the same process unless the roles are split)."""

    async def values(url: str) -> dict[str, float]:
        text = (await client.get(url)).text
        return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}

    api = await values("/metrics")
    trainer = api if trainer_metrics_url == "/metrics" else await values(trainer_metrics_url)
    return (
        time.perf_counter(),
        trainer.get("psp_trainer_examples_total", 0.0),
        api.get("psp_train_accepted_examples_total", 0.0),
    )


async def _train_phase(
    server: ServerProcess,
    keys: list[str],
    bodies: list[bytes],
    args: argparse.Namespace,
    cpu_pids: list[int],
    trainer_metrics_url: str = "/metrics",
) -> TrainFigures:
    """Streams train requests for warm-up + measured seconds, reads the trainer's counters at
    the start and the end of the measured window, then waits for the queue to drain."""
    recorder = Recorder()
    rngs = [random.Random(n) for n in range(args.train_clients)]
    total = args.warmup + args.seconds
    deadline = time.perf_counter() + total

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

    bound = int(total * MAX_REQUESTS_PER_SECOND) + 1
    cpu_before = sum(cpu_seconds(pid) for pid in cpu_pids)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        first = await _counters(client, trainer_metrics_url)
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
        start = await _counters(client, trainer_metrics_url)
        latencies_before = len(recorder.latencies["train"])
        await asyncio.sleep(args.seconds)
        end = await _counters(client, trainer_metrics_url)
        await load
        done = await _counters(client, trainer_metrics_url)
        load_end = done[0]
        while done[1] < done[2] and done[0] - load_end < DRAIN_TIMEOUT_S:
            await asyncio.sleep(0.05)
            done = await _counters(client, trainer_metrics_url)
    cpu_used = sum(cpu_seconds(pid) for pid in cpu_pids) - cpu_before
    window = end[0] - start[0]
    examples = done[2] - first[2]
    measured = recorder.latencies["train"][latencies_before:]
    return TrainFigures(
        applied_rate=(end[1] - start[1]) / window,
        accepted_rate=(end[2] - start[2]) / window,
        end_to_end_rate=(done[1] - first[1]) / (done[0] - first[0]),
        examples=examples,
        drain_seconds=done[0] - load_end,
        server_cpu_ms_per_1000=cpu_used / examples * 1e6 if examples else float("nan"),
        throttled=recorder.count("train", 429),
        failed=recorder.non_ok("train", ok=(202, 429)),
        p50_s=percentile(measured, 50),
        p99_s=percentile(measured, 99),
    )


def service_training_rate(
    args: argparse.Namespace,
    workdir: Path,
    name: str,
    extra_env: dict[str, str],
    split_roles: bool = False,
) -> TrainFigures:
    """Starts `psp serve` (role all; or role api beside a `psp worker` when `split_roles`),
    registers the contexts and measures training."""
    keys = [context_key(n) for n in range(args.contexts)]
    bodies = train_bodies(np.random.default_rng(1), 64, args.train_rows, args.input)
    env = {**service_env(args, workdir / f"{name}-data"), **extra_env}
    server = psp_serve(name, {**env, "PSP_ROLE": "api" if split_roles else "all"}, workdir)
    processes = [psp_worker(f"{name}-worker", env, workdir), server] if split_roles else [server]
    with running(*processes):
        register_contexts(server.base_url, keys)
        cpu_pids = [p.pid for p in processes]
        if "PSP_REDIS_URL" in env:
            cpu_pids += find_pids("redis-server")
        trainer_metrics = f"{processes[0].base_url}/metrics" if split_roles else "/metrics"
        watch = CpuWatch(cpu_pids)
        figures = run_async(_train_phase(server, keys, bodies, args, cpu_pids, trainer_metrics))
        figures.others = watch.line()
        return figures


def p5_training_throughput(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """P5: the service's applied examples/s ÷ the raw psp_core loop, in-process and Redis."""
    print(
        f"\nP5 training throughput: {args.train_clients} clients, {args.train_rows} rows per "
        f"POST /train (wait=false), {args.contexts} contexts, {args.seconds:g} s measured "
        f"after {args.warmup:g} s, then the queue drains"
    )
    load = load_average()
    watch = CpuWatch()
    raw = [raw_training_rate(args, args.seconds / 2)]
    raw_others = [watch.line()]
    in_process = service_training_rate(args, workdir, "psp-memory", {})
    with throwaway_redis_prefix() as prefix:
        redis_env = {"PSP_REDIS_URL": REDIS_URL, "PSP_KEY_PREFIX": prefix}
        via_redis = service_training_rate(args, workdir, "psp-redis", redis_env)
    with throwaway_redis_prefix() as prefix:
        redis_env = {"PSP_REDIS_URL": REDIS_URL, "PSP_KEY_PREFIX": prefix}
        split = service_training_rate(args, workdir, "psp-split", redis_env, split_roles=True)
    watch = CpuWatch()
    raw.append(raw_training_rate(args, args.seconds / 2))
    raw_others.append(watch.line())
    raw_rate = float(np.mean([r.rate for r in raw]))
    raw_cpu = float(np.mean([r.cpu_ms_per_1000 for r in raw]))
    rows = [
        ["raw psp_core loop", f"{raw_rate:,.0f}", "", "", f"{raw_cpu:.0f}", "", "", "1.00", "1.00"]
    ]
    paths = (
        ("in-process queue", in_process),
        ("Redis queue", via_redis),
        ("Redis, api + worker", split),
    )
    for label, fig in paths:
        rows.append(
            [
                label,
                f"{fig.applied_rate:,.0f}",
                f"{fig.accepted_rate:,.0f}",
                f"{fig.end_to_end_rate:,.0f}",
                f"{fig.server_cpu_ms_per_1000:.0f}",
                f"{ms(fig.p50_s)} / {ms(fig.p99_s)}",
                f"{fig.throttled} / {fig.failed}",
                f"{fig.applied_rate / raw_rate:.2f}",
                f"{raw_cpu / fig.server_cpu_ms_per_1000:.2f}",
            ]
        )
    print_table(
        [
            "path",
            "applied ex/s",
            "accepted ex/s",
            "end-to-end ex/s",
            "CPU ms/1000 ex",
            "p50/p99 ms",
            "429s/errors",
            "rate ÷ raw",
            "CPU raw ÷ this",
        ],
        rows,
    )
    blocks = ", ".join(f"{r.rate:,.0f}" for r in raw)
    print(f"  raw loop blocks (before, after): {blocks} examples/s")
    for label, fig in paths:
        print(
            f"  {label}: {fig.examples:,.0f} examples; the queue drained {fig.drain_seconds:.1f} s "
            f"after the load stopped"
        )
    print(
        f"  applied ÷ raw: in-process {in_process.applied_rate / raw_rate:.2f}, Redis "
        f"{via_redis.applied_rate / raw_rate:.2f}, Redis api + worker "
        f"{split.applied_rate / raw_rate:.2f}   goal >= 0.7"
    )
    print(f"  load average at start {load}; while measuring:")
    print(f"    raw loop before: {raw_others[0]}")
    print(f"    in-process queue: {in_process.others}")
    print(f"    Redis queue: {via_redis.others}")
    print(f"    Redis, api + worker: {split.others}")
    print(f"    raw loop after: {raw_others[1]}")
    return {
        "load_average": load,
        "raw_other_processes": raw_others,
        "raw_examples_per_s": raw_rate,
        "raw_cpu_ms_per_1000": raw_cpu,
        "raw_blocks": [r.__dict__ for r in raw],
        "in_process": in_process.__dict__,
        "redis": via_redis.__dict__,
        "redis_split_roles": split.__dict__,
        "ratio_in_process": in_process.applied_rate / raw_rate,
        "ratio_redis": via_redis.applied_rate / raw_rate,
        "ratio_redis_split_roles": split.applied_rate / raw_rate,
        "cpu_ratio_in_process": raw_cpu / in_process.server_cpu_ms_per_1000,
        "cpu_ratio_redis": raw_cpu / via_redis.server_cpu_ms_per_1000,
        "cpu_ratio_redis_split_roles": raw_cpu / split.server_cpu_ms_per_1000,
    }


def main(argv: list[str] | None = None) -> None:
    run_benchmark("training_throughput", "p5", p5_training_throughput, parse_args(argv))


if __name__ == "__main__":
    main()
