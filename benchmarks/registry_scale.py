"""Registry scale (P6): the real `psp serve` on PostgreSQL with many contexts, over real HTTP.

`--big-contexts` contexts registered in PostgreSQL through POST /contexts:batch (10 000 per
request; contexts/s reported); predict p50 latency of a single sequential client with keys
spread over all of them ÷ the same on a server holding 10 contexts (goal <= 1.1); and PostgreSQL
bytes per context, pg_total_relation_size('contexts') ÷ rows (goal <= 200 B).

The load generator runs in this process and shares the machine's cores with the servers.

Run: `python benchmarks/registry_scale.py [--big-contexts 100000] [--latency-requests 3000]
[--json PATH]`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from _cpu_usage import CpuWatch
from _harness import alternating, load_average, ms, percentile, print_table
from _service_requests import json_bodies, register_contexts, sequential_predicts
from _serving import add_service_options, run_benchmark, service_env
from _stores import postgres_dsn, throwaway_postgres
from bare_endpoint import context_key

from service.testing.processes import psp_serve, running


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--big-contexts", type=int, default=100_000, help="contexts registered")
    parser.add_argument(
        "--latency-requests", type=int, default=3000, help="sequential predicts per target"
    )
    add_service_options(parser)
    return parser.parse_args(argv)


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


BASELINE = "10 contexts"
"""The label of the server holding 10 contexts, whose p50 the others are divided by."""


def spread_label(big: int) -> str:
    """The label of the big server with keys spread over all its contexts."""
    return f"{big:,} contexts, keys over all"


@dataclass
class P6Run:
    """What P6 measured.

    Attributes:
        latencies: Sequential predict latencies per target, the 10-context server first.
        registration_seconds: Time spent registering the big server's contexts.
        storage: PostgreSQL bytes of the big server's `contexts` table (see `table_bytes`).
        load: Load averages before the registration.
        others: Which other processes used the CPU while latency was measured.
    """

    latencies: dict[str, list[float]]
    registration_seconds: float
    storage: dict[str, float]
    load: str
    others: str


def measure_registry(args: argparse.Namespace, workdir: Path) -> P6Run:
    """Registers 10 and `--big-contexts` contexts in two servers on their own PostgreSQL, then
    measures predict latency on both."""
    big = args.big_contexts
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
                (BASELINE, small.base_url, small_keys),
                (spread_label(big), large.base_url, big_keys),
                (f"{big:,} contexts, 10 hot keys", large.base_url, big_keys[:10]),
            ]
            watch_pids = [small.pid, large.pid]
            latencies, others = interleaved_latencies(targets, bodies, args, watch_pids)
    return P6Run(latencies, registration_seconds, storage, load, others)


def interleaved_latencies(
    targets: list[tuple[str, str, list[str]]],
    bodies: list[bytes],
    args: argparse.Namespace,
    server_pids: list[int],
) -> tuple[dict[str, list[float]], str]:
    """Warms every target up, then measures `--latency-requests` sequential predicts per
    target in `--rounds` alternating rounds.

    Args:
        targets: (label, base URL, keys to predict for).

    Returns:
        The latencies per label, and which other processes used the CPU meanwhile.
    """
    for _, url, keys in targets:  # warm-up
        sequential_predicts(url, keys, bodies, 200, seed=len(keys))
    watch = CpuWatch(server_pids)
    latencies: dict[str, list[float]] = {label: [] for label, _, _ in targets}
    per_round = max(1, args.latency_requests // args.rounds)
    for _, (label, url, keys) in alternating(targets, args.rounds):
        latencies[label] += sequential_predicts(url, keys, bodies, per_round, seed=len(keys))
    return latencies, watch.line()


def p6_registry_scale(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """P6: registration throughput, predict p50 at 100k ÷ at 10 contexts, bytes per context."""
    big = args.big_contexts
    print(f"\nP6 registry scale: PostgreSQL, {big:,} contexts vs 10, single sequential client")
    run = measure_registry(args, workdir)
    latencies, storage = run.latencies, run.storage
    base_p50 = percentile(latencies[BASELINE], 50)
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
    spread_ratio = percentile(latencies[spread_label(big)], 50) / base_p50
    rate = big / run.registration_seconds
    print(f"  registration: {big:,} contexts in {run.registration_seconds:.1f} s = {rate:,.0f}/s")
    print(
        f"  PostgreSQL: {storage['total_bytes'] / 2**20:.1f} MiB for {storage['rows']:,} rows = "
        f"{storage['bytes_per_context']:.0f} B per context (heap alone "
        f"{storage['heap_bytes_per_context']:.0f} B)   goal <= 200 B"
    )
    print(f"  p50 ratio (keys over all): {spread_ratio:.3f}   goal <= 1.1")
    print(f"  load average at start {run.load}; while measuring latency, {run.others}")
    return {
        "load_average": run.load,
        "other_processes": run.others,
        "registration_seconds": run.registration_seconds,
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
    run_benchmark("registry_scale", "p6", p6_registry_scale, parse_args(argv))


if __name__ == "__main__":
    main()
