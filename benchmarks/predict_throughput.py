"""Predict throughput (P4) of the real `psp serve` over real HTTP on loopback, as ratios of one run.

`--clients` concurrent clients, one row per request, keys spread over `--contexts` registered
contexts. The service (dynamic batcher) ÷ a bare FastAPI + torch endpoint of the same model that
runs one forward pass per request (`bare_endpoint.py`, in its thread-pool and its inline form).
Goal: service QPS ÷ bare QPS >= 1.5. Also p50 and p99 latency of each. The targets are measured
in interleaved rounds so that drift in the machine's load hits them alike.

The load generator runs in this process and shares the machine's cores with the servers.

Run: `python benchmarks/predict_throughput.py [--seconds 15] [--contexts 1000] [--clients 64]
[--json PATH]`.
"""

from __future__ import annotations

import argparse
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _harness import (
    JSON_HEADERS,
    CpuWatch,
    Recorder,
    cpu_seconds,
    drive,
    json_bodies,
    load_average,
    metric_value,
    ms,
    percentile,
    print_table,
    register_contexts,
    run_async,
    scrape,
)
from _serving import (
    MAX_REQUESTS_PER_SECOND,
    add_load_options,
    add_service_options,
    bare_server,
    run_benchmark,
    service_env,
)
from bare_endpoint import context_key

from service.testing.processes import ServerProcess, psp_serve, running


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_load_options(parser, "target")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--clients", type=int, default=64, help="concurrent predict clients")
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
    targets: list[tuple[str, ServerProcess, list[str]]],
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


def main(argv: list[str] | None = None) -> None:
    run_benchmark("predict_throughput", "p4", p4_predict_throughput, parse_args(argv))


if __name__ == "__main__":
    main()
