"""Training throughput (P5) of the real `psp serve` over real HTTP on loopback, end to end.

`--train-clients` clients POST /train (wait=false) batches of `--train-rows` rows to random
contexts; the figure is the trainer's applied rate, d(psp_trainer_examples_total)/dt from
/metrics over the measured window, for the in-process queue and Redis (role all), and for Redis
with the roles split (`psp serve` with PSP_ROLE=api beside `psp worker`), ÷ the raw psp_core
loop (`OnlineLearner.step` on minibatches of the trainer's size with the service's default
rehearsal, in this process, no HTTP; the rate without rehearsal is printed beside it).
Goal >= 0.7. `--paths split-2` (or `split-K`) also splits the contexts over K shards, each with
its own `psp worker`, and sums what the workers apply.

The load generator runs in this process and shares the machine's cores with the servers.

Run: `python benchmarks/training_throughput.py [--seconds 15] [--contexts 1000]
[--train-clients 16] [--paths memory,redis,split,split-2] [--json PATH]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import numpy as np
import torch
from _harness import (
    JSON_HEADERS,
    CpuWatch,
    Operation,
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
    throwaway_stores,
    train_bodies,
    with_descendants,
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
from psp_core.replay import DEFAULT_REPLAY_ROWS, ReplayBuffer
from service.testing.processes import ServerProcess, psp_serve, psp_worker, running

DRAIN_TIMEOUT_S = 180.0
"""Longest wait for the trainer to apply what was accepted, after the train load stops."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_load_options(parser, "path")
    parser.add_argument("--train-clients", type=int, default=16, help="concurrent train clients")
    parser.add_argument("--train-rows", type=int, default=32, help="rows per train request")
    parser.add_argument(
        "--paths",
        type=_path_list,
        default=_path_list("memory,redis,split"),
        help="comma-separated: memory and redis (role all), split (api + worker), split-K "
        "(api + K workers over K shards), memory-unscaled (memory without the per-context "
        "input scaling: the scaling's cost is memory's rate over this one's)",
    )
    add_service_options(parser)
    return parser.parse_args(argv)


def _path_list(text: str) -> list[str]:
    paths = [path.strip() for path in text.split(",") if path.strip()]
    for path in paths:
        if path not in ("memory", "memory-unscaled", "redis", "split") and not _split_workers(path):
            raise argparse.ArgumentTypeError(
                f"unknown path {path!r}; use memory, memory-unscaled, redis, split or split-K "
                "with K >= 1"
            )
    return paths


def _split_workers(path: str) -> int:
    """The number of workers of a split path (`split` is `split-1`), 0 for the others."""
    if path == "split":
        return 1
    count = path.removeprefix("split-")
    return int(count) if path.startswith("split-") and count.isdigit() and int(count) else 0


@dataclass
class RawFigures:
    """The plain psp_core loop: examples/s and CPU milliseconds per 1000 examples."""

    rate: float
    cpu_ms_per_1000: float


def raw_training_rate(
    args: argparse.Namespace, seconds: float, rehearsal: bool = True
) -> RawFigures:
    """The plain psp_core loop: `OnlineLearner.step` on minibatches of 32 rows mixed over
    `--contexts` contexts, the model of the same shape and `--torch-threads`, no HTTP, no queue.

    With `rehearsal` it learns as the service does by default: a buffer of
    `DEFAULT_REPLAY_ROWS` rows, 64 of them mixed into every step (96 rows a step in all), so the
    ratio to it is the cost of the service itself; without, the plain 32-row step.
    """
    config = ModelConfig(kind=args.kind, input_shape=(args.input,), hidden=tuple(args.hidden))
    model = build_model(config)
    model.bank.extend([ContextSpec(seed=n) for n in range(args.contexts)])
    replay = ReplayBuffer(DEFAULT_REPLAY_ROWS, args.input) if rehearsal else None
    learner = OnlineLearner(model, TrainingConfig(), replay=replay)
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


async def _train_phase(
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


def service_training_rate(
    args: argparse.Namespace,
    workdir: Path,
    name: str,
    extra_env: dict[str, str],
    workers: int = 0,
) -> TrainFigures:
    """Starts `psp serve` (role all; or, with `workers`, role api beside that many
    `psp worker`s, one per shard), registers the contexts and measures training."""
    keys = [context_key(n) for n in range(args.contexts)]
    bodies = train_bodies(np.random.default_rng(1), 64, args.train_rows, args.input)
    env = {**service_env(args, workdir / f"{name}-data"), **extra_env}
    if workers:
        env["PSP_SHARDS__COUNT"] = str(workers)
    server = psp_serve(name, {**env, "PSP_ROLE": "api" if workers else "all"}, workdir)
    writers = [
        psp_worker(f"{name}-worker-{shard}", env, workdir, "--shard", str(shard))
        for shard in range(workers)
    ]
    processes = [*writers, server]
    with running(*processes):
        register_contexts(server.base_url, keys)
        cpu_pids = with_descendants([p.pid for p in processes])
        if "PSP_REDIS_URL" in env:
            cpu_pids += find_pids("redis-server")
        trainer_metrics = [f"{w.base_url}/metrics" for w in writers] or ["/metrics"]
        watch = CpuWatch(cpu_pids)
        figures = run_async(_train_phase(server, keys, bodies, args, cpu_pids, trainer_metrics))
        figures.others = watch.line()
        return figures


def raw_block(args: argparse.Namespace) -> tuple[RawFigures, str]:
    """The raw loop for half of `--seconds`, and which other processes used the CPU meanwhile."""
    watch = CpuWatch()
    figures = raw_training_rate(args, args.seconds / 2)
    return figures, watch.line()


def service_paths(args: argparse.Namespace, workdir: Path) -> dict[str, TrainFigures]:
    """The service's figures on each of `--paths`: in-process queue, Redis, Redis with the roles
    split over one or more workers."""
    figures = {}
    for path in args.paths:
        if path == "memory":
            figures[path_label(path)] = service_training_rate(args, workdir, "psp-memory", {})
            continue
        if path == "memory-unscaled":
            unscaled = {"PSP_MODEL__INPUT_SCALING": "none"}
            figures[path_label(path)] = service_training_rate(
                args, workdir, "psp-memory-unscaled", unscaled
            )
            continue
        with throwaway_stores(postgres=False, redis=True) as redis_env:
            workers = _split_workers(path)
            figures[path_label(path)] = service_training_rate(
                args, workdir, f"psp-{path}", redis_env, workers
            )
    return figures


def path_label(path: str) -> str:
    """How the tables name a path of `--paths`."""
    workers = _split_workers(path)
    if not workers:
        return {
            "memory": "in-process queue",
            "memory-unscaled": "in-process queue, no input scaling",
            "redis": "Redis queue",
        }[path]
    if workers == 1:
        return "Redis, api + worker"
    return f"Redis, api + {workers} workers ({workers} shards)"


def path_json_name(path: str) -> str:
    """How the JSON names a path of `--paths`."""
    workers = _split_workers(path)
    if not workers:
        return {
            "memory": "in_process",
            "memory-unscaled": "in_process_unscaled",
            "redis": "redis",
        }[path]
    return "redis_split_roles" if workers == 1 else f"redis_split_roles_{workers}_shards"


def print_paths(raw_rate: float, raw_cpu: float, paths: dict[str, TrainFigures]) -> None:
    raw = ["raw loop, rehearsal on", f"{raw_rate:,.0f}", "", "", f"{raw_cpu:.0f}"]
    rows = [[*raw, "", "", "1.00", "1.00"]]
    for label, fig in paths.items():
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


def p5_training_throughput(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """P5: the service's applied examples/s ÷ the raw psp_core loop, in-process and Redis."""
    print(
        f"\nP5 training throughput: {args.train_clients} clients, {args.train_rows} rows per "
        f"POST /train (wait=false), {args.contexts} contexts, {args.seconds:g} s measured "
        f"after {args.warmup:g} s, then the queue drains"
    )
    load = load_average()
    before, before_others = raw_block(args)
    paths = service_paths(args, workdir)
    after, after_others = raw_block(args)
    plain = raw_training_rate(args, args.seconds / 2, rehearsal=False)
    raw_rate = float(np.mean([before.rate, after.rate]))
    raw_cpu = float(np.mean([before.cpu_ms_per_1000, after.cpu_ms_per_1000]))
    print_paths(raw_rate, raw_cpu, paths)
    print(
        f"  raw loop with the service's rehearsal (64 past rows per step), blocks before and "
        f"after: {before.rate:,.0f}, {after.rate:,.0f} examples/s; without rehearsal "
        f"{plain.rate:,.0f} examples/s (the services ÷ that: "
        + ", ".join(f"{fig.applied_rate / plain.rate:.2f}" for fig in paths.values())
        + ")"
    )
    for label, fig in paths.items():
        print(
            f"  {label}: {fig.examples:,.0f} examples; the queue drained {fig.drain_seconds:.1f} s "
            f"after the load stopped"
        )
    ratios = ", ".join(f"{label} {fig.applied_rate / raw_rate:.2f}" for label, fig in paths.items())
    print(f"  applied ÷ raw: {ratios}   goal >= 0.7")
    split = {label: fig for label, fig in paths.items() if label.startswith("Redis, api")}
    if len(split) > 1:
        one = split.get(path_label("split"))
        for label, fig in split.items():
            if one is not None and fig is not one:
                print(f"  {label} ÷ one worker: {fig.applied_rate / one.applied_rate:.2f}")
    print(f"  load average at start {load}; while measuring:")
    print(f"    raw loop before: {before_others}")
    for label, fig in paths.items():
        print(f"    {label}: {fig.others}")
    print(f"    raw loop after: {after_others}")
    return {
        "load_average": load,
        "raw_other_processes": [before_others, after_others],
        "raw_examples_per_s": raw_rate,
        "raw_cpu_ms_per_1000": raw_cpu,
        "raw_blocks": [before.__dict__, after.__dict__],
        "raw_without_rehearsal": plain.__dict__,
        **path_figures(raw_rate, raw_cpu, args.paths, paths),
    }


def path_figures(
    raw_rate: float, raw_cpu: float, order: list[str], paths: dict[str, TrainFigures]
) -> dict[str, Any]:
    """Each path's figures, then its rate ÷ the raw loop's, then the raw loop's CPU ÷ its."""
    named = {path_json_name(path): paths[path_label(path)] for path in order}
    return {
        **{name: fig.__dict__ for name, fig in named.items()},
        **{f"ratio_{name}": fig.applied_rate / raw_rate for name, fig in named.items()},
        **{
            f"cpu_ratio_{name}": raw_cpu / fig.server_cpu_ms_per_1000 for name, fig in named.items()
        },
    }


def main(argv: list[str] | None = None) -> None:
    run_benchmark("training_throughput", "p5", p5_training_throughput, parse_args(argv))


if __name__ == "__main__":
    main()
