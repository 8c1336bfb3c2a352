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
import sys
import time
from pathlib import Path

from _cpu_usage import CpuWatch
from _harness import load_average, machine_line, save_json, throwaway_dir
from _load import drive, run_async
from _prometheus import metric_value, scrape
from _service_requests import register_contexts
from _soak_audit import audit, log_problems
from _soak_clients import SoakClients, SoakState
from _soak_report import SoakRun, passed, print_report, soak_figures
from _stores import throwaway_stores

from service.testing.processes import psp_serve, running


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
