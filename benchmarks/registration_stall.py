"""Does bulk context registration stall predictions? Predict p99 idle vs during registration.

A `psp serve` (embedded, complex 2 × 256 by default) answers one client that predicts one row
at a time, back to back. First the client runs alone (idle); then `POST /contexts:batch`
registers `--contexts` new contexts in one request while the client keeps predicting. Context
generation runs off the event loop and outside the model lock, so the p99 during registration
should stay within 2× of the idle p99.

    .venv/bin/python benchmarks/registration_stall.py --contexts 10000
"""

from __future__ import annotations

import argparse
import threading
import time

import httpx
from _harness import machine_line, ms, percentile, print_table, save_json, throwaway_dir
from _server_env import model_env
from _service_requests import register_contexts

from service.testing.processes import psp_serve, running


def _predict_latencies(base_url: str, until: threading.Event, limit: int) -> list[float]:
    """Seconds of each back-to-back predict until `until` is set or `limit` requests."""
    latencies: list[float] = []
    body = {"inputs": [[0.5] * 64]}
    with httpx.Client(base_url=base_url, timeout=30) as client:
        while not until.is_set() and len(latencies) < limit:
            began = time.perf_counter()
            response = client.post("/predict/probe", json=body)
            latencies.append(time.perf_counter() - began)
            if response.status_code != 200:
                raise RuntimeError(f"predict failed: {response.status_code} {response.text}")
    return latencies


def idle_and_during(args: argparse.Namespace) -> tuple[list[float], list[float], float]:
    """Predict latencies of the client alone, then while `--contexts` contexts are registered
    in one request, on a fresh `psp serve`; and the seconds that registration took."""
    with throwaway_dir() as workdir:
        env = {**model_env(64, [256, 256], args.kind), "PSP_DATA_DIR": str(workdir / "data")}
        with running(psp_serve("serve", env, workdir)) as (server,):
            register_contexts(server.base_url, ["probe"])
            _predict_latencies(server.base_url, threading.Event(), 200)  # warm-up
            idle = _predict_latencies(server.base_url, threading.Event(), args.idle_requests)

            done = threading.Event()
            spent: list[float] = []
            keys = [f"bulk-{i}" for i in range(args.contexts)]

            def register() -> None:
                try:
                    spent.append(register_contexts(server.base_url, keys))
                finally:
                    done.set()

            registering = threading.Thread(target=register)
            registering.start()
            during = _predict_latencies(server.base_url, done, 10**9)
            registering.join()
    return idle, during, spent[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, default=10_000)
    parser.add_argument("--idle-requests", type=int, default=1000)
    parser.add_argument("--kind", default="complex")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    idle, during, registration_seconds = idle_and_during(args)
    rows = [
        [phase, len(values), ms(percentile(values, 50)), ms(percentile(values, 99))]
        for phase, values in (("idle", idle), ("during registration", during))
    ]
    print(machine_line())
    print(f"{args.contexts} {args.kind} contexts registered in {registration_seconds:.2f} s")
    print_table(["phase", "requests", "p50", "p99"], rows)
    ratio = percentile(during, 99) / percentile(idle, 99)
    print(f"p99 during / idle: {ratio:.2f}")
    save_json(
        args.json,
        {
            "contexts": args.contexts,
            "registration_seconds": registration_seconds,
            "idle_p50": percentile(idle, 50),
            "idle_p99": percentile(idle, 99),
            "during_p50": percentile(during, 50),
            "during_p99": percentile(during, 99),
            "during_requests": len(during),
            "p99_ratio": ratio,
        },
    )


if __name__ == "__main__":
    main()
