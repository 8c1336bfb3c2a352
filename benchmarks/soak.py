"""Soak: a mixed load on the real `psp serve`, then an exactly-once audit.

`--clients` concurrent clients register contexts (POST /contexts), train (POST /train, every
request with an Idempotency-Key, a share of them with `?wait=true`) and predict, on loopback,
for `--seconds`. Figures:

- errors: any 5xx answer or transport error (goal 0). A 429 is not an error: the client waits
  its Retry-After and sends the same request again (same Idempotency-Key); 429s are counted
  apart. A failed train request is also retried under its Idempotency-Key, so that whether it
  was accepted is always settled.
- p50 / p99 latency per route.
- exactly-once: after the load, the trainer drains; then for every context `examples_seen`
  (GET /contexts) must equal the rows the clients had accepted (202, or 200 with wait=true)
  for it, and stay so.

PASS needs zero errors and the audit to hold; the exit status is 1 otherwise.

Stores: PostgreSQL + Redis by default (the production path); `--no-postgres` and
`--no-redis` fall back to the embedded SQLite registry and in-process queue.

Run: `python benchmarks/soak.py [--seconds 60] [--clients 64] [--no-redis] [--no-postgres]
[--json PATH]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _harness import (
    JSON_HEADERS,
    CpuWatch,
    Recorder,
    drive,
    load_average,
    machine_line,
    metric_value,
    ms,
    percentile,
    predict_one,
    print_table,
    register_contexts,
    run_async,
    save_json,
    scrape,
    throwaway_dir,
    throwaway_stores,
)

from service.testing.processes import psp_serve, running

ROUTES = ("register", "train", "train?wait", "predict")
RETRIES = 5
"""Extra tries of a train request that failed (5xx or transport error) under its key."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60, help="seconds of mixed load")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients")
    parser.add_argument("--redis", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--postgres", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--initial-contexts", type=int, default=200)
    parser.add_argument("--register-share", type=float, default=0.05)
    parser.add_argument("--train-share", type=float, default=0.35)
    parser.add_argument("--wait-share", type=float, default=0.1, help="of train requests")
    parser.add_argument("--max-train-rows", type=int, default=32)
    parser.add_argument(
        "--checkpoint-seconds",
        type=float,
        default=5,
        help="PSP_CHECKPOINT__EVERY_SECONDS (bounds how long the final drain takes)",
    )
    parser.add_argument(
        "--max-pending-examples",
        type=int,
        default=None,
        help="PSP_QUEUE__MAX_PENDING_EXAMPLES; a small value exercises 429 + Retry-After",
    )
    parser.add_argument("--drain-timeout", type=float, default=180)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="save the figures to this JSON file")
    return parser.parse_args(argv)


@dataclass
class TrainBody:
    """A pre-encoded train body and its row count."""

    content: bytes
    rows: int


def make_bodies(rng: np.random.Generator, count: int, max_rows: int) -> list[TrainBody]:
    """`count` train bodies of 1..`max_rows` random rows of the default 64-wide input."""
    bodies = []
    for _ in range(count):
        rows = int(rng.integers(1, max_rows + 1))
        body = {
            "inputs": rng.random((rows, 64)).round(4).tolist(),
            "labels": rng.integers(0, 10, rows).tolist(),
        }
        bodies.append(TrainBody(json.dumps(body).encode(), rows))
    return bodies


@dataclass
class SoakState:
    """What the clients know: live keys, accepted rows per key and unsettled requests.

    Attributes:
        keys: Contexts registered so far (by this run).
        accepted: Rows per key the service accepted (202, or 200 with wait=true).
        unsettled: Train requests whose acceptance stayed unknown after every retry.
        throttled: 429 answers, each honoured by waiting its Retry-After.
    """

    keys: list[str]
    accepted: Counter[str] = field(default_factory=Counter)
    unsettled: int = 0
    throttled: int = 0
    deadline: float = 0.0  # perf_counter() when the load ends


class SoakClients:
    """The mixed operations of the soak, sharing one `Recorder` and one `SoakState`."""

    def __init__(self, args: argparse.Namespace, state: SoakState) -> None:
        self.args = args
        self.state = state
        self.recorder = Recorder()
        self.run_id = uuid.uuid4().hex[:8]
        self.rngs = [random.Random(args.seed * 1000 + n) for n in range(args.clients)]
        self.sequence = [0] * args.clients
        self.bodies = make_bodies(np.random.default_rng(args.seed), 128, args.max_train_rows)
        predict_rng = np.random.default_rng(args.seed + 1)
        self.predicts = [
            json.dumps({"inputs": predict_rng.random((n % 4 + 1, 64)).round(4).tolist()}).encode()
            for n in range(64)
        ]

    async def operation(self, client: httpx.AsyncClient, number: int) -> None:
        rng = self.rngs[number]
        self.sequence[number] += 1
        draw = rng.random()
        if draw < self.args.register_share:
            await self.register(client, f"soak-{self.run_id}-{number}-{self.sequence[number]}")
        elif draw < self.args.register_share + self.args.train_share:
            await self.train(client, rng, f"{self.run_id}-{number}-{self.sequence[number]}")
        else:
            await predict_one(self.recorder, client, rng, self.state.keys, self.predicts)

    async def register(self, client: httpx.AsyncClient, key: str) -> None:
        response = await self.recorder.send(
            client, "register", "POST", "/contexts", json={"key": key}
        )
        if response is not None and response.status_code in (200, 201):
            self.state.keys.append(key)

    async def train(self, client: httpx.AsyncClient, rng: random.Random, token: str) -> None:
        """One batch under one Idempotency-Key, retried until its fate is known."""
        key = self.state.keys[rng.randrange(len(self.state.keys))]
        body = self.bodies[rng.randrange(len(self.bodies))]
        wait = rng.random() < self.args.wait_share
        route = "train?wait" if wait else "train"
        url = f"/train/{key}" + ("?wait=true" if wait else "")
        headers = {**JSON_HEADERS, "Idempotency-Key": token}
        failures = 0
        while failures <= RETRIES:
            response = await self.recorder.send(
                client, route, "POST", url, content=body.content, headers=headers
            )
            if response is not None and response.status_code in (200, 202):
                self.state.accepted[key] += body.rows
                return
            if response is not None and response.status_code == 429:
                self.state.throttled += 1
                if time.perf_counter() > self.state.deadline:
                    return  # a 429 queued nothing, so giving up after the load ends is safe
                await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                continue
            if response is not None and response.status_code < 500:
                return  # refused (4xx): nothing was queued
            failures += 1
            await asyncio.sleep(0.2)
        self.state.unsettled += 1


# The audit ----------------------------------------------------------------------------------


def examples_seen(base_url: str) -> dict[str, int]:
    """examples_seen of every live context, paging through GET /contexts."""
    seen: dict[str, int] = {}
    with httpx.Client(base_url=base_url, timeout=30) as client:
        offset = 0
        while True:
            page = client.get("/contexts", params={"limit": 1000, "offset": offset}).json()
            seen.update({item["key"]: item["examples_seen"] for item in page["items"]})
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return seen


def mismatches(expected: Counter[str], keys: list[str], seen: dict[str, int]) -> dict[str, Any]:
    """Contexts whose examples_seen differs from the rows accepted for them."""
    return {
        key: {"expected": expected[key], "seen": seen.get(key)}
        for key in keys
        if seen.get(key) != expected[key]
    }


def audit(base_url: str, state: SoakState, timeout: float) -> tuple[dict[str, Any], float]:
    """Waits for the trainer to apply and count everything, then checks it stays exact.

    Returns:
        The mismatching contexts (empty when exactly once held) and the seconds the drain took.
    """
    began = time.monotonic()
    wrong: dict[str, Any] = {}
    while time.monotonic() - began < timeout:
        wrong = mismatches(state.accepted, state.keys, examples_seen(base_url))
        if not wrong:
            break
        time.sleep(1.0)
    drained = time.monotonic() - began
    if not wrong:
        time.sleep(3.0)  # nothing may be counted twice later either
        wrong = mismatches(state.accepted, state.keys, examples_seen(base_url))
    return wrong, drained


def log_problems(log: Path) -> list[str]:
    """Lines of the server log that report errors or tracebacks."""
    if not log.exists():
        return []
    return [
        line
        for line in log.read_text(errors="replace").splitlines()
        if "Traceback" in line or " ERROR " in line or line.startswith("ERROR")
    ]


# Report -------------------------------------------------------------------------------------


def route_rows(recorder: Recorder) -> list[list[Any]]:
    rows = []
    for route in ROUTES:
        latencies = recorder.latencies[route]
        statuses = {s: n for (r, s), n in sorted(recorder.statuses.items()) if r == route}
        rows.append(
            [
                route,
                len(latencies),
                ms(percentile(latencies, 50)),
                ms(percentile(latencies, 99)),
                ms(max(latencies, default=float("nan"))),
                " ".join(f"{s}:{n}" for s, n in statuses.items()),
                recorder.transport_errors[route],
            ]
        )
    return rows


def error_count(recorder: Recorder) -> int:
    """5xx answers and transport errors over every route."""
    fives = sum(n for (_, status), n in recorder.statuses.items() if status >= 500)
    return fives + sum(recorder.transport_errors.values())


def unexpected_count(recorder: Recorder) -> int:
    """4xx answers other than 429: the soak sends only valid requests."""
    return sum(
        n for (_, status), n in recorder.statuses.items() if 400 <= status < 500 and status != 429
    )


@dataclass
class SoakRun:
    """What the soak measured around its load.

    Attributes:
        seconds: Wall seconds of the mixed load.
        load_start: Load averages before the load.
        load_end: Load averages right after it.
        others: Which other processes used the CPU during the load.
        wrong: Contexts whose examples_seen differs from the rows accepted for them.
        drained: Seconds the trainer took to apply and count everything after the load.
        applied: Examples the trainer applied (psp_trainer_examples_total).
        problems: Error and traceback lines of the server's log.
    """

    seconds: float
    load_start: str
    load_end: str
    others: str
    wrong: dict[str, Any]
    drained: float
    applied: float
    problems: list[str]


def server_env(args: argparse.Namespace, workdir: Path, stores: dict[str, str]) -> dict[str, str]:
    """The settings of the soaked `psp serve` (role all) on the given stores."""
    env = {
        **stores,
        "PSP_DATA_DIR": str(workdir / "data"),
        "PSP_DEVICE": "cpu",
        "PSP_ROLE": "all",
        "PSP_CHECKPOINT__EVERY_SECONDS": str(args.checkpoint_seconds),
    }
    if args.max_pending_examples is not None:
        env["PSP_QUEUE__MAX_PENDING_EXAMPLES"] = str(args.max_pending_examples)
    return env


def soak(args: argparse.Namespace, clients: SoakClients, initial: list[str]) -> SoakRun:
    """Starts the server on throwaway stores, registers `initial`, runs the mixed load of
    `clients` for `--seconds`, then audits what the trainer counted."""
    state = clients.state
    with (
        throwaway_dir() as workdir,
        throwaway_stores(postgres=args.postgres, redis=args.redis) as stores,
    ):
        server = psp_serve("soak", server_env(args, workdir, stores), workdir)
        with running(server):
            register_contexts(server.base_url, initial)
            load_start = load_average()
            state.deadline = time.perf_counter() + args.seconds
            watch = CpuWatch([server.pid])
            elapsed = run_async(
                drive(
                    server.base_url,
                    clients.operation,
                    clients=args.clients,
                    seconds=args.seconds,
                    max_operations=int(args.seconds * 20_000),
                    timeout=90,
                )
            )
            load_end = load_average()
            others = watch.line()
            wrong, drained = audit(server.base_url, state, args.drain_timeout)
            applied = metric_value(scrape(server.base_url), "psp_trainer_examples_total")
        problems = log_problems(server.log)
    return SoakRun(elapsed, load_start, load_end, others, wrong, drained, applied, problems)


def passed(clients: SoakClients, run: SoakRun) -> bool:
    """No error, no refusal, every train request settled, and the audit held."""
    recorder, state = clients.recorder, clients.state
    no_refusals = error_count(recorder) == 0 and unexpected_count(recorder) == 0
    return no_refusals and state.unsettled == 0 and not run.wrong


def request_count(recorder: Recorder) -> int:
    """Requests sent, answered or not."""
    return sum(recorder.statuses.values()) + sum(recorder.transport_errors.values())


def print_report(clients: SoakClients, run: SoakRun, initial_contexts: int) -> None:
    recorder, state = clients.recorder, clients.state
    requests = request_count(recorder)
    print(f"\n{requests:,} requests in {run.seconds:.1f} s = {requests / run.seconds:,.0f}/s")
    print_table(
        ["route", "answers", "p50 ms", "p99 ms", "max ms", "statuses", "transport errors"],
        route_rows(recorder),
    )
    live = len(state.keys) - initial_contexts
    print(f"  errors (5xx + transport): {error_count(recorder)}   goal 0")
    print(f"  429 answers honoured (Retry-After): {state.throttled}")
    print(
        f"  other 4xx answers: {unexpected_count(recorder)};  "
        f"unsettled train requests: {state.unsettled}"
    )
    print(f"  contexts: {len(state.keys):,} ({live:,} registered live)")
    print(f"  rows accepted: {sum(state.accepted.values()):,}; ", end="")
    print(f"trainer applied (psp_trainer_examples_total): {run.applied:,.0f}; ", end="")
    print(f"drain + count took {run.drained:.1f} s")
    print(f"  exactly-once audit: {len(run.wrong)} contexts differ", end="")
    print(f" e.g. {dict(list(run.wrong.items())[:3])}" if run.wrong else "")
    print(f"  server log error lines: {len(run.problems)}")
    for line in run.problems[:5]:
        print(f"    {line}")
    print(f"  load average at start {run.load_start}, end of load {run.load_end}; {run.others}")
    print("PASS" if passed(clients, run) else "FAIL")


def route_figures(recorder: Recorder) -> dict[str, Any]:
    """Answers, p50 / p99 latency, statuses and transport errors of every route, for JSON."""
    return {
        route: {
            "answers": len(recorder.latencies[route]),
            "p50_s": percentile(recorder.latencies[route], 50),
            "p99_s": percentile(recorder.latencies[route], 99),
            "statuses": {str(s): n for (r, s), n in recorder.statuses.items() if r == route},
            "transport_errors": recorder.transport_errors[route],
        }
        for route in ROUTES
    }


def soak_figures(
    args: argparse.Namespace, stack: str, clients: SoakClients, run: SoakRun
) -> dict[str, Any]:
    recorder, state = clients.recorder, clients.state
    return {
        "machine": machine_line(),
        "args": vars(args),
        "stores": stack,
        "seconds": run.seconds,
        "requests": request_count(recorder),
        "routes": route_figures(recorder),
        "errors": error_count(recorder),
        "throttled": state.throttled,
        "unexpected_4xx": unexpected_count(recorder),
        "unsettled": state.unsettled,
        "contexts": len(state.keys),
        "accepted_rows": sum(state.accepted.values()),
        "applied_examples_metric": run.applied,
        "drain_seconds": run.drained,
        "mismatched_contexts": len(run.wrong),
        "server_log_error_lines": len(run.problems),
        "load_average_start": run.load_start,
        "load_average_end_of_load": run.load_end,
        "other_processes": run.others,
        "passed": passed(clients, run),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stack = ("PostgreSQL" if args.postgres else "SQLite") + " + "
    stack += "Redis" if args.redis else "in-process queue"
    print(f"soak: {machine_line()}")
    print(
        f"psp serve (role all, {stack}), {args.clients} clients, {args.seconds:g} s: "
        f"register {args.register_share:.0%}, train {args.train_share:.0%} "
        f"(wait=true {args.wait_share:.0%} of them), predict "
        f"{1 - args.register_share - args.train_share:.0%}; "
        f"checkpoint every {args.checkpoint_seconds:g} s; queue limit "
        f"{args.max_pending_examples or 'default'} examples"
    )
    initial = [f"soak-init-{n:05d}" for n in range(args.initial_contexts)]
    clients = SoakClients(args, SoakState(keys=list(initial)))
    run = soak(args, clients, initial)
    print_report(clients, run, len(initial))
    save_json(args.json, soak_figures(args, stack, clients, run))
    return 0 if passed(clients, run) else 1


if __name__ == "__main__":
    sys.exit(main())
