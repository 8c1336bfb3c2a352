"""Serving load: the real `psp serve` over real HTTP on loopback, as ratios of one run.

P4  Predict throughput: `--clients` concurrent clients, one row per request, keys spread over
    `--contexts` registered contexts. The service (dynamic batcher) ÷ a bare FastAPI + torch
    endpoint of the same model that runs one forward pass per request (`bare_endpoint.py`,
    in its thread-pool and its inline form). Goal: service QPS ÷ bare QPS >= 1.5. Also p50 and
    p99 latency of each. The targets are measured in interleaved rounds so that drift in the
    machine's load hits them alike.
P5  Training throughput end to end: `--train-clients` clients POST /train (wait=false) batches
    of `--train-rows` rows to random contexts; the figure is the trainer's applied rate,
    d(psp_trainer_examples_total)/dt from /metrics over the measured window, for the
    in-process queue and Redis (role all), and for Redis with the roles split (`psp serve`
    with PSP_ROLE=api beside `psp worker`), ÷ the raw psp_core loop
    (`OnlineLearner.step` on minibatches of the trainer's size, in this process, no HTTP).
    Goal >= 0.7.
P6  Scale of the registry: `--big-contexts` contexts registered in PostgreSQL through
    POST /contexts:batch (10 000 per request; contexts/s reported); predict p50 latency of a
    single sequential client with keys spread over all of them ÷ the same on a server holding
    10 contexts (goal <= 1.1); and PostgreSQL bytes per context,
    pg_total_relation_size('contexts') ÷ rows (goal <= 200 B).

The load generator runs in this process and shares the machine's cores with the servers.

Run: `python benchmarks/serve_load.py [--seconds 15] [--contexts 1000] [--clients 64]
[--parts p4,p5,p6] [--json PATH]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import torch
from _harness import (
    JSON_HEADERS,
    REDIS_URL,
    CpuWatch,
    Recorder,
    Server,
    cpu_seconds,
    drive,
    find_pids,
    free_port,
    json_bodies,
    load_average,
    machine_line,
    metric_value,
    ms,
    percentile,
    postgres_dsn,
    print_table,
    psp_serve,
    psp_worker,
    register_contexts,
    run_async,
    running,
    save_json,
    scrape,
    throwaway_dir,
    throwaway_postgres,
    throwaway_redis_prefix,
    torch_thread_env,
)
from bare_endpoint import context_key
from prometheus_client.parser import text_string_to_metric_families

from psp_core import ContextSpec, ModelConfig, OnlineLearner, TrainingConfig, build_model

MAX_REQUESTS_PER_SECOND = 50_000
"""Bound on requests a load loop may start per second of its duration (a safety stop)."""

DRAIN_TIMEOUT_S = 180.0
"""Longest wait for the trainer to apply what was accepted, after the train load stops."""


# Configuration ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15, help="measured seconds per target")
    parser.add_argument("--warmup", type=float, default=3, help="warm-up seconds per target")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (P4, P6)")
    parser.add_argument("--contexts", type=int, default=1000, help="contexts for P4 and P5")
    parser.add_argument("--clients", type=int, default=64, help="concurrent predict clients")
    parser.add_argument("--train-clients", type=int, default=16, help="concurrent train clients")
    parser.add_argument("--train-rows", type=int, default=32, help="rows per train request")
    parser.add_argument("--big-contexts", type=int, default=100_000, help="contexts for P6")
    parser.add_argument(
        "--latency-requests", type=int, default=3000, help="sequential predicts per P6 target"
    )
    parser.add_argument(
        "--max-delay-us",
        type=int,
        default=None,
        help="PSP_BATCHER__MAX_DELAY_US for the service (default: the service's own)",
    )
    parser.add_argument(
        "--registry-poll-seconds",
        type=float,
        default=None,
        help="PSP_REGISTRY_POLL_SECONDS for the service (default: the service's own)",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="OMP_NUM_THREADS of every server and torch threads of the raw loop; 0 leaves "
        "torch's default (one per core)",
    )
    parser.add_argument("--kind", default="complex")
    parser.add_argument("--input", type=int, default=64)
    parser.add_argument(
        "--hidden", type=lambda s: tuple(int(v) for v in s.split(",")), default=(256, 256)
    )
    parser.add_argument("--parts", default="p4,p5,p6", help="comma-separated subset of p4,p5,p6")
    parser.add_argument("--json", default=None, help="save the figures to this JSON file")
    return parser.parse_args(argv)


def service_env(args: argparse.Namespace, data_dir: Path) -> dict[str, str]:
    """Settings shared by every `psp serve` of this benchmark (embedded stores by default)."""
    env = {
        "PSP_DATA_DIR": str(data_dir),
        "PSP_DEVICE": "cpu",
        "PSP_MODEL__KIND": args.kind,
        "PSP_MODEL__INPUT_SHAPE": json.dumps([args.input]),
        "PSP_MODEL__HIDDEN": json.dumps(list(args.hidden)),
    }
    if args.max_delay_us is not None:
        env["PSP_BATCHER__MAX_DELAY_US"] = str(args.max_delay_us)
    if args.registry_poll_seconds is not None:
        env["PSP_REGISTRY_POLL_SECONDS"] = str(args.registry_poll_seconds)
    return {**env, **thread_env(args)}


def thread_env(args: argparse.Namespace) -> dict[str, str]:
    """`OMP_NUM_THREADS` for a server process when `--torch-threads` is given."""
    return torch_thread_env(args.torch_threads)


def bare_server(args: argparse.Namespace, mode: str, workdir: Path) -> Server:
    """The bare endpoint (`bare_endpoint.py`) under uvicorn, in `thread` or `inline` mode."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "bare_endpoint:create_app",
        "--factory",
        "--app-dir",
        str(Path(__file__).parent),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    env = {
        "BARE_MODE": mode,
        "BARE_KIND": args.kind,
        "BARE_INPUT": str(args.input),
        "BARE_HIDDEN": ",".join(map(str, args.hidden)),
        "BARE_CONTEXTS": str(args.contexts),
        **thread_env(args),
    }
    return Server(f"bare-{mode}", command, env, port, workdir / f"bare-{mode}.log")


# Predict load -------------------------------------------------------------------------------


@dataclass
class PredictFigures:
    """Predict requests answered 200 over the measured time, pooled over rounds."""

    ok: int = 0
    failed: int = 0
    seconds: float = 0.0
    server_cpu: float = 0.0  # CPU seconds the server process used
    client_cpu: float = 0.0  # CPU seconds the load generator (this process) used
    latencies: list[float] = field(default_factory=list)

    def add(self, recorder: Recorder, seconds: float, server_cpu: float, client_cpu: float) -> None:
        self.ok += recorder.count("predict", 200)
        self.failed += recorder.non_ok("predict")
        self.seconds += seconds
        self.server_cpu += server_cpu
        self.client_cpu += client_cpu
        self.latencies += recorder.latencies["predict"]

    @property
    def server_ms_per_request(self) -> float:
        """Server CPU milliseconds per answered request: the cost, whatever else runs."""
        return self.server_cpu / self.ok * 1e3 if self.ok else float("nan")

    @property
    def client_ms_per_request(self) -> float:
        return self.client_cpu / self.ok * 1e3 if self.ok else float("nan")

    @property
    def qps(self) -> float:
        """Successful predictions per second."""
        return self.ok / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, float]:
        return {
            "qps": self.qps,
            "requests": self.ok,
            "failed": self.failed,
            "p50_s": percentile(self.latencies, 50),
            "p99_s": percentile(self.latencies, 99),
            "server_cpu_ms_per_request": self.server_ms_per_request,
            "client_cpu_ms_per_request": self.client_ms_per_request,
        }


def predict_load(
    base_url: str, keys: list[str], bodies: list[bytes], clients: int, seconds: float, seed: int
) -> tuple[Recorder, float]:
    """`clients` closed-loop clients predicting one row for random keys for `seconds`."""
    recorder = Recorder()
    rngs = [random.Random(seed * 1000 + n) for n in range(clients)]

    async def operation(client: httpx.AsyncClient, number: int) -> None:
        rng = rngs[number]
        key = keys[rng.randrange(len(keys))]
        body = bodies[rng.randrange(len(bodies))]
        url = f"/predict/{key}"
        await recorder.send(client, "predict", "POST", url, content=body, headers=JSON_HEADERS)

    bound = int(seconds * MAX_REQUESTS_PER_SECOND) + 1
    elapsed = run_async(
        drive(base_url, operation, clients=clients, seconds=seconds, max_operations=bound)
    )
    return recorder, elapsed


def interleaved_predict(
    targets: list[tuple[str, Server, list[str]]],
    bodies: list[bytes],
    *,
    clients: int,
    seconds: float,
    warmup: float,
    rounds: int,
) -> dict[str, PredictFigures]:
    """Warms each target up, then measures them in `rounds` alternating slices of
    `seconds / rounds` each.

    Args:
        targets: (label, server, keys to predict for).
    """
    for _, server, keys in targets:
        predict_load(server.base_url, keys, bodies, clients, warmup, seed=0)
    figures = {label: PredictFigures() for label, _, _ in targets}
    me = os.getpid()
    for number in range(rounds):
        order = targets if number % 2 == 0 else targets[::-1]
        for label, server, keys in order:
            server_cpu, client_cpu = cpu_seconds(server.pid), cpu_seconds(me)
            recorder, elapsed = predict_load(
                server.base_url, keys, bodies, clients, seconds / rounds, seed=number + 1
            )
            figures[label].add(
                recorder,
                elapsed,
                cpu_seconds(server.pid) - server_cpu,
                cpu_seconds(me) - client_cpu,
            )
    return figures


def p4_predict_throughput(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """P4: service QPS ÷ bare-endpoint QPS at `--clients` concurrency, one row per request."""
    print(f"\nP4 predict throughput: {args.clients} clients, 1 row per request, ", end="")
    print(f"{args.contexts} contexts, {args.seconds:g} s per target in {args.rounds} rounds")
    keys = [context_key(n) for n in range(args.contexts)]
    bodies = json_bodies(np.random.default_rng(0), 256, 1, args.input)
    service = psp_serve("psp", service_env(args, workdir / "p4-data"), workdir)
    bare_thread = bare_server(args, "thread", workdir)
    bare_inline = bare_server(args, "inline", workdir)
    with running(service, bare_thread, bare_inline):
        register_contexts(service.base_url, keys)
        load = load_average()
        watch = CpuWatch([service.pid, bare_thread.pid, bare_inline.pid])
        figures = interleaved_predict(
            [
                ("psp serve (batcher)", service, keys),
                ("bare, thread pool + lock", bare_thread, keys),
                ("bare, inline on the loop", bare_inline, keys),
            ],
            bodies,
            clients=args.clients,
            seconds=args.seconds,
            warmup=args.warmup,
            rounds=args.rounds,
        )
        others = watch.line()
        batch_rows = batcher_mean_rows(service.base_url)
    psp = figures["psp serve (batcher)"]
    rows = []
    for label, fig in figures.items():
        ratio = psp.qps / fig.qps if fig.qps else float("nan")
        rows.append(
            [
                label,
                f"{fig.qps:,.0f}",
                ms(percentile(fig.latencies, 50)),
                ms(percentile(fig.latencies, 99)),
                fig.failed,
                f"{fig.server_ms_per_request:.3f}",
                f"{fig.client_ms_per_request:.3f}",
                f"{ratio:.2f}",
            ]
        )
    print_table(
        [
            "target",
            "QPS",
            "p50 ms",
            "p99 ms",
            "non-200",
            "server CPU ms/req",
            "client CPU ms/req",
            "psp QPS ÷ this",
        ],
        rows,
    )
    thread_ratio = psp.qps / figures["bare, thread pool + lock"].qps
    inline_ratio = psp.qps / figures["bare, inline on the loop"].qps
    print(f"  mean rows per service forward pass: {batch_rows:.1f}")
    print(
        f"  service QPS ÷ bare QPS: {thread_ratio:.2f} (thread pool), {inline_ratio:.2f} "
        f"(inline)   goal >= 1.5"
    )
    print(f"  load average at start {load}; while measuring, {others}")
    return {
        "load_average": load,
        "other_processes": others,
        "targets": {label: fig.summary() for label, fig in figures.items()},
        "mean_rows_per_forward": batch_rows,
        "ratio_vs_bare_thread": thread_ratio,
        "ratio_vs_bare_inline": inline_ratio,
    }


def batcher_mean_rows(base_url: str) -> float:
    """Mean rows per forward pass of the service's predict batcher so far."""
    samples = scrape(base_url)
    count = metric_value(samples, "psp_predict_batch_rows_count")
    return metric_value(samples, "psp_predict_batch_rows_sum") / count if count else 0.0


# Training throughput ------------------------------------------------------------------------


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
    server: Server,
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


# Registry scale -----------------------------------------------------------------------------


def table_bytes(database_url: str) -> dict[str, float]:
    """PostgreSQL storage of the `contexts` table: total (heap + indexes + TOAST) per row."""
    with psycopg.connect(postgres_dsn(database_url)) as connection:
        rows, total, heap = connection.execute(
            "SELECT count(*), pg_total_relation_size('contexts'), pg_relation_size('contexts') "
            "FROM contexts"
        ).fetchone()  # type: ignore[misc]
    return {
        "rows": rows,
        "total_bytes": total,
        "heap_bytes": heap,
        "bytes_per_context": total / rows,
        "heap_bytes_per_context": heap / rows,
    }


def sequential_latencies(
    base_url: str, keys: list[str], bodies: list[bytes], count: int
) -> list[float]:
    """Latencies of `count` predicts sent one after another by a single client."""
    recorder = Recorder()
    rng = random.Random(len(keys))

    async def operation(client: httpx.AsyncClient, number: int) -> None:
        url = f"/predict/{keys[rng.randrange(len(keys))]}"
        body = bodies[rng.randrange(len(bodies))]
        await recorder.send(client, "predict", "POST", url, content=body, headers=JSON_HEADERS)

    run_async(drive(base_url, operation, clients=1, seconds=300, max_operations=count))
    if recorder.non_ok("predict"):
        raise RuntimeError(f"{recorder.non_ok('predict')} predicts failed on {base_url}")
    return recorder.latencies["predict"]


def p6_registry_scale(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """P6: registration throughput, predict p50 at 100k ÷ at 10 contexts, bytes per context."""
    big = args.big_contexts
    print(f"\nP6 registry scale: PostgreSQL, {big:,} contexts vs 10, single sequential client")
    small_keys = [context_key(n) for n in range(10)]
    big_keys = [context_key(n) for n in range(big)]
    bodies = json_bodies(np.random.default_rng(2), 256, 1, args.input)
    with throwaway_postgres() as small_db, throwaway_postgres() as big_db:
        small = psp_serve(
            "psp-10", {**service_env(args, workdir / "p6a"), "PSP_DATABASE_URL": small_db}, workdir
        )
        large = psp_serve(
            "psp-big", {**service_env(args, workdir / "p6b"), "PSP_DATABASE_URL": big_db}, workdir
        )
        with running(small, large):
            register_contexts(small.base_url, small_keys)
            load = load_average()
            registration_seconds = register_contexts(large.base_url, big_keys, chunk=10_000)
            storage = table_bytes(big_db)
            targets = [
                ("10 contexts", small.base_url, small_keys),
                (f"{big:,} contexts, keys over all", large.base_url, big_keys),
                (f"{big:,} contexts, 10 hot keys", large.base_url, big_keys[:10]),
            ]
            for _, url, keys in targets:  # warm-up
                sequential_latencies(url, keys, bodies, 200)
            watch = CpuWatch([small.pid, large.pid])
            latencies: dict[str, list[float]] = {label: [] for label, _, _ in targets}
            per_round = max(1, args.latency_requests // args.rounds)
            for number in range(args.rounds):
                order = targets if number % 2 == 0 else targets[::-1]
                for label, url, keys in order:
                    latencies[label] += sequential_latencies(url, keys, bodies, per_round)
            others = watch.line()
    base_p50 = percentile(latencies["10 contexts"], 50)
    rows = [
        [
            label,
            len(values),
            ms(percentile(values, 50)),
            ms(percentile(values, 99)),
            f"{percentile(values, 50) / base_p50:.3f}",
        ]
        for label, values in latencies.items()
    ]
    print_table(["server", "requests", "p50 ms", "p99 ms", "p50 ÷ 10-context p50"], rows)
    spread_ratio = percentile(latencies[targets[1][0]], 50) / base_p50
    rate = big / registration_seconds
    print(f"  registration: {big:,} contexts in {registration_seconds:.1f} s = {rate:,.0f}/s")
    print(
        f"  PostgreSQL: {storage['total_bytes'] / 2**20:.1f} MiB for {storage['rows']:,} rows = "
        f"{storage['bytes_per_context']:.0f} B per context (heap alone "
        f"{storage['heap_bytes_per_context']:.0f} B)   goal <= 200 B"
    )
    print(f"  p50 ratio (keys over all): {spread_ratio:.3f}   goal <= 1.1")
    print(f"  load average at start {load}; while measuring latency, {others}")
    return {
        "load_average": load,
        "other_processes": others,
        "registration_seconds": registration_seconds,
        "registration_per_s": rate,
        "storage": storage,
        "latency": {
            label: {
                "requests": len(values),
                "p50_s": percentile(values, 50),
                "p99_s": percentile(values, 99),
            }
            for label, values in latencies.items()
        },
        "p50_ratio": spread_ratio,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    parts = set(args.parts.split(","))
    delay = "default" if args.max_delay_us is None else args.max_delay_us
    poll = "default" if args.registry_poll_seconds is None else args.registry_poll_seconds
    print(f"serve_load: {machine_line()}")
    print(
        f"model {args.kind} {args.input}-{'-'.join(map(str, args.hidden))}-10 on cpu; "
        f"PSP_BATCHER__MAX_DELAY_US={delay}; PSP_REGISTRY_POLL_SECONDS={poll}; "
        f"OMP_NUM_THREADS={args.torch_threads or 'default'}; "
        "the load generator runs in this process and shares the cores"
    )
    figures: dict[str, Any] = {"machine": machine_line(), "args": vars(args)}
    with throwaway_dir() as workdir:
        if "p4" in parts:
            figures["p4"] = p4_predict_throughput(args, workdir)
        if "p5" in parts:
            figures["p5"] = p5_training_throughput(args, workdir)
        if "p6" in parts:
            figures["p6"] = p6_registry_scale(args, workdir)
    figures["load_average_end"] = load_average()
    print(f"\nload average at the end: {figures['load_average_end']}")
    save_json(args.json, figures)


if __name__ == "__main__":
    main()
