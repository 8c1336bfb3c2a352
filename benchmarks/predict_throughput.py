"""Predict throughput (P4) of the real `psp serve` over real HTTP on loopback, as ratios of one run.

`--clients` concurrent clients, one row per request, keys spread over `--contexts` registered
contexts. The service (dynamic batcher) ÷ a bare FastAPI + torch endpoint of the same model that
runs one forward pass per request (`bare_endpoint.py`, in its thread-pool and its inline form).
Goal: service QPS ÷ bare QPS >= 1.5. Also p50 and p99 latency of each. The targets are measured
in interleaved rounds so that drift in the machine's load hits them alike.

The load generator runs in this process and shares the machine's cores with the servers, unless
`--client wrk` hands the load to wrk (Debian's `wrk`, a C load generator: `benchmarks/_wrk.py`),
which costs the servers' cores almost nothing.

Run: `python benchmarks/predict_throughput.py [--seconds 15] [--contexts 1000] [--clients 64]
[--client raw|httpx|wrk] [--json PATH]`.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _cpu_usage import CpuWatch, cpu_seconds
from _harness import alternating, load_average, ms, percentile, print_table
from _load import Recorder, drive, run_async
from _prometheus import metric_value, scrape
from _raw_http import drive_raw, post_request
from _service_requests import json_bodies, predict_one, register_contexts
from _serving import (
    MAX_REQUESTS_PER_SECOND,
    add_load_options,
    add_service_options,
    bare_server,
    run_benchmark,
    service_env,
)
from _wrk import WrkRun, wrk_predict
from bare_endpoint import context_key

from service.testing.processes import ServerProcess, psp_serve, running

SERVICE = "psp serve (batcher)"
BARE_THREAD = "bare, thread pool + lock"
BARE_INLINE = "bare, inline on the loop"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_load_options(parser, "target")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--clients", type=int, default=64, help="concurrent predict clients")
    parser.add_argument(
        "--client",
        choices=["raw", "httpx", "wrk"],
        default="raw",
        help="the load generator's HTTP client: raw keep-alive HTTP/1.1 (tens of microseconds "
        "a request), httpx (over a millisecond a request, on the same cores as the servers) or "
        "wrk (a C load generator, a few microseconds a request)",
    )
    add_service_options(parser)
    return parser.parse_args(argv)


@dataclass
class PredictFigures:
    """Predict requests answered 200 over the measured time, pooled over rounds."""

    ok: int = 0
    failed: int = 0
    seconds: float = 0.0
    server_cpu: float = 0.0  # CPU seconds the server process used
    client_cpu: float = 0.0  # CPU seconds the load generator (this process) used
    latencies: list[float] = field(default_factory=list)
    round_percentiles: list[tuple[float, float]] = field(default_factory=list)  # wrk's (p50, p99)

    def add_wrk(self, run: WrkRun, server_cpu: float) -> None:
        self.ok += run.answered
        self.failed += run.failed
        self.seconds += run.seconds
        self.server_cpu += server_cpu
        self.client_cpu += run.client_cpu
        self.round_percentiles.append((run.p50_s, run.p99_s))

    def percentile(self, q: int) -> float:
        """Over every request; for wrk, which reports percentiles only, the median of its
        rounds' percentiles."""
        if self.latencies or not self.round_percentiles:
            return percentile(self.latencies, q)
        return statistics.median(p50 if q == 50 else p99 for p50, p99 in self.round_percentiles)

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
            "p50_s": self.percentile(50),
            "p99_s": self.percentile(99),
            "server_cpu_ms_per_request": self.server_ms_per_request,
            "client_cpu_ms_per_request": self.client_ms_per_request,
        }


def predict_load(
    base_url: str,
    keys: list[str],
    bodies: list[bytes],
    load: LoadShape,
    seconds: float,
    seed: int,
) -> tuple[Recorder, float]:
    """`load.clients` closed-loop clients predicting one row for random keys for `seconds`."""
    recorder = Recorder()
    rngs = [random.Random(seed * 1000 + n) for n in range(load.clients)]
    bound = int(seconds * MAX_REQUESTS_PER_SECOND) + 1
    if load.client == "raw":

        def next_request(number: int) -> bytes:
            rng = rngs[number]
            key = keys[rng.randrange(len(keys))]
            return post_request(f"/predict/{key}", bodies[rng.randrange(len(bodies))])

        elapsed = run_async(
            drive_raw(
                base_url,
                "predict",
                next_request,
                recorder,
                clients=load.clients,
                seconds=seconds,
                max_operations=bound,
            )
        )
        return recorder, elapsed

    async def operation(client: httpx.AsyncClient, number: int) -> None:
        await predict_one(recorder, client, rngs[number], keys, bodies)

    elapsed = run_async(
        drive(base_url, operation, clients=load.clients, seconds=seconds, max_operations=bound)
    )
    return recorder, elapsed


@dataclass(frozen=True)
class LoadShape:
    """How many clients load a target, and with which HTTP client (see `--client`)."""

    clients: int
    client: str


def interleaved_predict(
    targets: list[tuple[str, ServerProcess, list[str]]],
    bodies: list[bytes],
    *,
    load: LoadShape,
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
        if load.client == "wrk":
            wrk_predict(server.base_url, keys, bodies, clients=load.clients, seconds=warmup, seed=0)
        else:
            predict_load(server.base_url, keys, bodies, load, warmup, seed=0)
    figures = {label: PredictFigures() for label, _, _ in targets}
    me = os.getpid()
    for number, (label, server, keys) in alternating(targets, rounds):
        server_cpu, client_cpu = cpu_seconds(server.pid), cpu_seconds(me)
        if load.client == "wrk":
            run = wrk_predict(
                server.base_url,
                keys,
                bodies,
                clients=load.clients,
                seconds=seconds / rounds,
                seed=number + 1,
            )
            figures[label].add_wrk(run, cpu_seconds(server.pid) - server_cpu)
            continue
        recorder, elapsed = predict_load(
            server.base_url, keys, bodies, load, seconds / rounds, seed=number + 1
        )
        figures[label].add(
            recorder, elapsed, cpu_seconds(server.pid) - server_cpu, cpu_seconds(me) - client_cpu
        )
    return figures


@dataclass
class P4Run:
    """The targets' figures, with what else the machine did meanwhile.

    Attributes:
        figures: Per target label; the service's first.
        load: Load averages at the start.
        others: Which other processes used the CPU while measuring.
        batch_rows: Mean rows per forward pass of the service's batcher.
    """

    figures: dict[str, PredictFigures]
    load: str
    others: str
    batch_rows: float


def measure_targets(args: argparse.Namespace, workdir: Path) -> P4Run:
    """Starts the service and both bare endpoints and measures them in interleaved rounds."""
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
                (SERVICE, service, keys),
                (BARE_THREAD, bare_thread, keys),
                (BARE_INLINE, bare_inline, keys),
            ],
            bodies,
            load=LoadShape(args.clients, args.client),
            seconds=args.seconds,
            warmup=args.warmup,
            rounds=args.rounds,
        )
        others = watch.line()
        return P4Run(figures, load, others, batcher_mean_rows(service.base_url))


def print_targets(figures: dict[str, PredictFigures]) -> None:
    psp = figures[SERVICE]
    rows = []
    for label, fig in figures.items():
        ratio = psp.qps / fig.qps if fig.qps else float("nan")
        rows.append(
            [
                label,
                f"{fig.qps:,.0f}",
                ms(fig.percentile(50)),
                ms(fig.percentile(99)),
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


def p4_predict_throughput(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """P4: service QPS ÷ bare-endpoint QPS at `--clients` concurrency, one row per request."""
    print(f"\nP4 predict throughput: {args.clients} clients, 1 row per request, ", end="")
    print(f"{args.contexts} contexts, {args.seconds:g} s per target in {args.rounds} rounds")
    run = measure_targets(args, workdir)
    print_targets(run.figures)
    psp = run.figures[SERVICE]
    thread_ratio = psp.qps / run.figures[BARE_THREAD].qps
    inline_ratio = psp.qps / run.figures[BARE_INLINE].qps
    print(f"  mean rows per service forward pass: {run.batch_rows:.1f}")
    print(
        f"  service QPS ÷ bare QPS: {thread_ratio:.2f} (thread pool), {inline_ratio:.2f} "
        f"(inline)   goal >= 1.5"
    )
    print(f"  load average at start {run.load}; while measuring, {run.others}")
    return {
        "load_average": run.load,
        "other_processes": run.others,
        "targets": {label: fig.summary() for label, fig in run.figures.items()},
        "mean_rows_per_forward": run.batch_rows,
        "ratio_vs_bare_thread": thread_ratio,
        "ratio_vs_bare_inline": inline_ratio,
    }


def batcher_mean_rows(base_url: str) -> float:
    """Mean rows per forward pass of the service's predict batcher so far."""
    samples = scrape(base_url)
    count = metric_value(samples, "psp_predict_batch_rows_count")
    return metric_value(samples, "psp_predict_batch_rows_sum") / count if count else 0.0


def main(argv: list[str] | None = None) -> None:
    run_benchmark("predict_throughput", "p4", p4_predict_throughput, parse_args(argv))


if __name__ == "__main__":
    main()
