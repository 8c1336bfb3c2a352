"""Predict throughput through psp_client against raw httpx calls on the same load.

A `psp serve` (embedded, complex 2 x 256, 64 inputs) answers one client that predicts
`--rows` rows per request, back to back. Rounds alternate between a raw `httpx.Client` and a
`psp_client.Client` (one connection each, the same bodies), so that load from other work on the
machine falls on both sides alike; the figure is the median of the rounds' throughputs.

    .venv/bin/python benchmarks/client_overhead.py --rounds 8 --requests 300
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import httpx
import numpy as np
from _harness import machine_line, print_table, save_json, throwaway_dir
from _server_env import model_env
from _service_requests import register_contexts

from psp_client import Client
from service.testing.processes import psp_serve, running

KEY = "probe"


def _throughput(requests: int, predict: Callable[[], object]) -> float:
    """Requests per second of `requests` back-to-back calls of `predict`."""
    began = time.perf_counter()
    for _ in range(requests):
        predict()
    return requests / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--requests", type=int, default=300, help="per round and side")
    parser.add_argument("--rows", type=int, default=8, help="rows per predict request")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    inputs = np.random.default_rng(0).standard_normal((args.rows, 64)).round(4).tolist()
    body = {"inputs": inputs}

    with throwaway_dir() as workdir:
        env = {**model_env(64, [256, 256], "complex"), "PSP_DATA_DIR": str(workdir / "data")}
        with running(psp_serve("serve", env, workdir)) as (server,):
            register_contexts(server.base_url, [KEY])
            with (
                httpx.Client(base_url=server.base_url, timeout=30) as raw,
                Client(server.base_url) as client,
            ):

                def raw_predict() -> object:
                    response = raw.post(f"/predict/{KEY}", json=body)
                    response.raise_for_status()
                    return response.json()

                def client_predict() -> object:
                    return client.predict(KEY, inputs)

                _throughput(100, raw_predict)  # warm-up of the server and both connections
                _throughput(100, client_predict)
                raw_rates, client_rates = [], []
                for _ in range(args.rounds):
                    raw_rates.append(_throughput(args.requests, raw_predict))
                    client_rates.append(_throughput(args.requests, client_predict))

    raw_rate, client_rate = statistics.median(raw_rates), statistics.median(client_rates)
    ratio = client_rate / raw_rate
    print(machine_line())
    print_table(
        ["side", "median req/s", "rounds (req/s)"],
        [
            ["raw httpx", f"{raw_rate:.0f}", " ".join(f"{r:.0f}" for r in raw_rates)],
            ["psp_client", f"{client_rate:.0f}", " ".join(f"{r:.0f}" for r in client_rates)],
        ],
    )
    print(f"psp_client / raw httpx throughput: {ratio:.3f} (goal >= 0.9)")
    save_json(args.json, {"raw": raw_rates, "client": client_rates, "ratio": ratio})


if __name__ == "__main__":
    main()
