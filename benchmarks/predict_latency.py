"""Predict latency through the real `psp serve` over HTTP on loopback, as medians of one run.

idle   One client sends one row at a time, each request after the previous answer, to keys
       spread over `--contexts` contexts: the service's p50 ÷ the p50 of a bare FastAPI + torch
       endpoint of the same model (`bare_endpoint.py`, thread-pool form), measured in
       interleaved rounds so that drift in the machine's load hits both alike. Goal <= 1.2.
       `--no-bare` measures the service alone (the bare endpoint runs on the CPU only).
burst  `--burst-clients` clients each send one request of `--burst-rows ÷ --burst-clients` rows
       to its own context at the same moment, so that the batcher forms one forward pass of
       `--burst-rows` rows over mixed contexts; the figure is the p50 over `--bursts` bursts of
       the time from the first send to the last answer.
training
       One client predicts as in `idle` while `--train-clients` clients post `--train-rows`-row
       batches with `wait=true`, so that the trainer always has a step to run: the predict p50
       and p99 with that load ÷ without it, measured in interleaved rounds of
       `--training-seconds` each on one service.

Run: `python benchmarks/predict_latency.py [--device cuda] [--kind complex] [--hidden 256,256]
[--parts idle,burst,training] [--json PATH]`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _harness import machine_line, ms, percentile, print_table, save_json, throwaway_dir
from _load import Recorder, drive, run_async
from _raw_http import drive_raw, post_request
from _server_env import model_env, torch_thread_env
from _service_requests import (
    JSON_HEADERS,
    json_bodies,
    predict_one,
    register_contexts,
    sequential_predicts,
    train_bodies,
)
from _serving import bare_server
from bare_endpoint import context_key

from service.testing.processes import ServerProcess, psp_serve, running


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="PSP_DEVICE of the service")
    parser.add_argument("--kind", default="complex")
    parser.add_argument("--input", type=int, default=64)
    parser.add_argument(
        "--hidden", type=lambda s: tuple(int(v) for v in s.split(",")), default=(256, 256)
    )
    parser.add_argument("--contexts", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=400, help="idle requests per target")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved idle rounds")
    parser.add_argument("--burst-rows", type=int, default=4096)
    parser.add_argument("--burst-clients", type=int, default=64)
    parser.add_argument("--bursts", type=int, default=20)
    parser.add_argument("--no-bare", action="store_true", help="skip the bare endpoint")
    parser.add_argument("--train-clients", type=int, default=4)
    parser.add_argument("--train-rows", type=int, default=32)
    parser.add_argument("--training-seconds", type=float, default=10.0)
    parser.add_argument(
        "--parts", default="idle,burst", help="comma-separated: idle, burst, training"
    )
    parser.add_argument("--torch-threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="save the figures to this JSON file")
    return parser.parse_args(argv)


def service(args: argparse.Namespace, workdir: Path) -> ServerProcess:
    """`psp serve` of the benchmark's model, with embedded stores."""
    env = {
        **model_env(args.input, args.hidden, args.kind),
        "PSP_DATA_DIR": str(workdir / "data"),
        "PSP_DEVICE": args.device,
        **torch_thread_env(args.torch_threads),
    }
    return psp_serve("service", env, workdir)


def sequential_p50(base_url: str, keys: list[str], bodies: list[bytes], count: int) -> float:
    """The median latency of `count` one-row predicts sent one after another."""
    return percentile(sequential_predicts(base_url, keys, bodies, count, seed=count), 50)


def idle(args: argparse.Namespace, workdir: Path, keys: list[str]) -> dict[str, Any]:
    bodies = json_bodies(np.random.default_rng(0), 64, 1, args.input)
    servers = [service(args, workdir)]
    if not args.no_bare:
        servers.append(bare_server(args, "thread", workdir))
    with running(*servers):
        register_contexts(servers[0].base_url, keys)
        for server in servers:  # warm-up
            sequential_p50(server.base_url, keys, bodies, 50)
        per_round: dict[str, list[float]] = {s.name: [] for s in servers}
        for _ in range(args.rounds):
            for server in servers:
                p50 = sequential_p50(server.base_url, keys, bodies, args.requests // args.rounds)
                per_round[server.name].append(p50)
    figures: dict[str, Any] = {name: float(np.median(v)) for name, v in per_round.items()}
    rows = [[name, ms(p50)] for name, p50 in figures.items()]
    if not args.no_bare:
        figures["ratio"] = figures["service"] / figures["bare-thread"]
        rows.append(["service ÷ bare (goal <= 1.2)", f"{figures['ratio']:.2f}"])
    print(f"idle: one client, one row, {args.kind} {args.input}-{args.hidden}, {args.device}")
    print_table(["target", "p50 ms"], rows)
    return figures


async def _one_burst(base_url: str, keys: list[str], bodies: list[bytes]) -> float:
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = [
        httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) for _ in range(len(keys))
    ]
    try:
        # One request each first, so that every connection is open before the clock starts.
        await asyncio.gather(
            *(
                c.post(f"/predict/{k}", content=bodies[0], headers=JSON_HEADERS)
                for c, k in zip(clients, keys, strict=True)
            )
        )
        began = time.perf_counter()
        answers = await asyncio.gather(
            *(
                c.post(f"/predict/{k}", content=b, headers=JSON_HEADERS)
                for c, k, b in zip(clients, keys, bodies, strict=True)
            )
        )
        elapsed = time.perf_counter() - began
    finally:
        for client in clients:
            await client.aclose()
    bad = [a.status_code for a in answers if a.status_code != 200]
    if bad:
        raise RuntimeError(f"burst predicts failed with {bad}")
    return elapsed


def burst(args: argparse.Namespace, workdir: Path, keys: list[str]) -> dict[str, Any]:
    rows_each = max(1, args.burst_rows // args.burst_clients)
    bodies = json_bodies(np.random.default_rng(1), args.burst_clients, rows_each, args.input)
    targets = keys[: args.burst_clients]
    with running(service(args, workdir)) as (server,):
        register_contexts(server.base_url, keys)
        run_async(_one_burst(server.base_url, targets, bodies))  # warm-up
        times = [
            run_async(_one_burst(server.base_url, targets, bodies)) for _ in range(args.bursts)
        ]
    p50 = percentile(times, 50)
    rows = rows_each * args.burst_clients
    print(
        f"burst: {args.burst_clients} clients × {rows_each} rows, one context each, {args.device}"
    )
    print_table(["rows", "p50 ms", "p90 ms"], [[rows, ms(p50), ms(percentile(times, 90))]])
    return {"rows": rows, "p50": p50}


def _predicts_for(base_url: str, keys: list[str], bodies: list[bytes], seconds: float) -> Recorder:
    """One client's sequential one-row predicts for `seconds`."""
    recorder = Recorder()
    rng = random.Random(int(seconds * 1000))

    async def operation(client: httpx.AsyncClient, number: int) -> None:
        await predict_one(recorder, client, rng, keys, bodies)

    run_async(drive(base_url, operation, clients=1, seconds=seconds, max_operations=10**9))
    if recorder.non_ok("predict"):
        raise RuntimeError(f"{recorder.non_ok('predict')} predicts failed on {base_url}")
    return recorder


def _train_load(
    args: argparse.Namespace, base_url: str, keys: list[str], bodies: list[bytes]
) -> tuple[threading.Thread, Recorder]:
    """`--train-clients` closed loops of `POST /train?wait=true` for `--training-seconds`, on
    the light HTTP client in a thread of their own (started)."""
    recorder = Recorder()
    rngs = [random.Random(n) for n in range(args.train_clients)]

    def next_request(number: int) -> bytes:
        rng = rngs[number]
        key = keys[rng.randrange(len(keys))]
        return post_request(f"/train/{key}?wait=true", bodies[rng.randrange(len(bodies))])

    load = drive_raw(
        base_url,
        "train",
        next_request,
        recorder,
        clients=args.train_clients,
        seconds=args.training_seconds,
        max_operations=10**9,
    )
    thread = threading.Thread(target=run_async, args=(load,), daemon=True)
    thread.start()
    return thread, recorder


def training(args: argparse.Namespace, workdir: Path, keys: list[str]) -> dict[str, Any]:
    predict = json_bodies(np.random.default_rng(0), 64, 1, args.input)
    train = train_bodies(np.random.default_rng(2), 64, args.train_rows, args.input)
    latencies: dict[str, list[float]] = {"quiet": [], "training": []}
    trained = 0
    with running(service(args, workdir)) as (server,):
        register_contexts(server.base_url, keys)
        sequential_p50(server.base_url, keys, predict, 50)  # warm-up
        for _ in range(args.rounds):
            quiet = _predicts_for(server.base_url, keys, predict, args.training_seconds)
            latencies["quiet"] += quiet.latencies["predict"]
            thread, load = _train_load(args, server.base_url, keys, train)
            time.sleep(0.5)  # the trainer is busy before the first predict
            busy = _predicts_for(server.base_url, keys, predict, args.training_seconds - 1)
            latencies["training"] += busy.latencies["predict"]
            thread.join()
            trained += load.count("train", 200) * args.train_rows
            if load.non_ok("train"):
                raise RuntimeError(f"{load.non_ok('train')} train requests failed")
    figures: dict[str, Any] = {
        phase: {"p50": percentile(v, 50), "p99": percentile(v, 99), "predicts": len(v)}
        for phase, v in latencies.items()
    }
    figures["examples_trained_per_second"] = trained / (args.rounds * args.training_seconds)
    for q in ("p50", "p99"):
        figures[f"{q}_ratio"] = figures["training"][q] / figures["quiet"][q]
    print(
        f"training: one predict client, beside {args.train_clients} clients training "
        f"{args.train_rows}-row batches (wait=true), {args.kind} {args.input}-{args.hidden}, "
        f"{args.device}; {figures['examples_trained_per_second']:,.0f} examples/s trained"
    )
    print_table(
        ["phase", "predicts", "p50 ms", "p99 ms"],
        [
            [
                phase,
                figures[phase]["predicts"],
                ms(figures[phase]["p50"]),
                ms(figures[phase]["p99"]),
            ]
            for phase in latencies
        ]
        + [["training ÷ quiet", "", f"{figures['p50_ratio']:.2f}", f"{figures['p99_ratio']:.2f}"]],
    )
    return figures


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    parts = set(args.parts.split(","))
    print(machine_line())
    keys = [context_key(n) for n in range(args.contexts)]
    figures: dict[str, Any] = {}
    with throwaway_dir() as workdir:
        for part, measure in (("idle", idle), ("burst", burst), ("training", training)):
            if part in parts:
                (workdir / part).mkdir()
                figures[part] = measure(args, workdir / part, keys)
    save_json(args.json, figures)


if __name__ == "__main__":
    main()
