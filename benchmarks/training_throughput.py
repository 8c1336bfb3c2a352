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
from pathlib import Path
from typing import Any

import numpy as np
from _cpu_usage import CpuWatch, find_pids, with_descendants
from _harness import load_average, ms, print_table
from _load import run_async
from _raw_training import raw_block, raw_training_rate
from _service_requests import register_contexts, train_bodies
from _serving import add_load_options, add_service_options, run_benchmark, service_env
from _stores import throwaway_stores
from _train_load import TrainFigures, train_phase
from _train_paths import path_json_name, path_label, split_workers
from bare_endpoint import context_key

from service.testing.processes import psp_serve, psp_worker, running


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
        if path not in ("memory", "memory-unscaled", "redis", "split") and not split_workers(path):
            raise argparse.ArgumentTypeError(
                f"unknown path {path!r}; use memory, memory-unscaled, redis, split or split-K "
                "with K >= 1"
            )
    return paths


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
        figures = run_async(train_phase(server, keys, bodies, args, cpu_pids, trainer_metrics))
        figures.others = watch.line()
        return figures


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
            workers = split_workers(path)
            figures[path_label(path)] = service_training_rate(
                args, workdir, f"psp-{path}", redis_env, workers
            )
    return figures


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
