"""Noisy neighbours: what one tenant's traffic costs the others, through HTTP, with defaults.

Each attack runs against a fresh `psp serve` (embedded defaults: complex 2x256, SQLite, the
in-process queue) and is compared with the same run without the attacker:

- `predict`: 16 clients predict 16 rows each for 20 tenants while one more tenant predicts rows
  of 3e38; the victims' failed answers are counted.
- `scale`, `random`: 16 tenants learn label-permuted digits (1,500 rows each, blocks of 50,
  interleaved, sent without waiting); one more tenant sends a block after each of theirs, with
  its inputs multiplied by 1e6 and random labels (`scale`) or random labels alone (`random`).
  The victims' mean and worst test accuracy is compared with the clean run's.
- `flood`: one tenant posts 4,096-row batches from four clients as fast as it can while eight
  tenants post 50 rows every 50 ms; the victims' 429s are counted.
- `refusal`: eight tenants post 64 rows with `wait=true` while one more posts single rows of
  3e38; the victims' refused rows are counted, with the default input scaling and without it
  (where the extreme rows make their steps non-finite).
- `busy`: the 10-task permuted-digits stream (`psp bench continual`, 500 posts with
  `wait=true`) on a quiet machine and beside a single-threaded busy loop.

    python benchmarks/noisy_neighbours.py                   # every attack
    python benchmarks/noisy_neighbours.py --attacks scale,busy --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _harness import machine_line, save_json, throwaway_dir

from psp_bench.tenants import TenantsStream
from service.testing.processes import ServerProcess, psp_command, psp_serve

ATTACKS = ("predict", "scale", "random", "flood", "refusal", "busy")
EXTREME = 3e38


@contextlib.contextmanager
def served(directory: Path, name: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """A fresh `psp serve` on defaults (plus `env`), its base URL while the block runs."""
    data = directory / name
    data.mkdir()
    server: ServerProcess = psp_serve(name, {"PSP_DATA_DIR": str(data), **(env or {})}, directory)
    server.start()
    try:
        yield server.base_url
    finally:
        server.stop()


def register(base: str, keys: list[str]) -> None:
    body = {"contexts": [{"key": key} for key in keys]}
    answer = httpx.post(f"{base}/contexts:batch", json=body, timeout=60)
    answer.raise_for_status()


# predict ------------------------------------------------------------------------------------


async def _predict_load(base: str, seconds: float, attacker: bool) -> dict[str, Any]:
    victims = [f"victim-{i}" for i in range(20)]
    register(base, [*victims, "attacker"])
    rng = np.random.default_rng(0)
    normal = rng.random((16, 64)).tolist()
    extreme = [[EXTREME] * 64 for _ in range(16)]
    outcomes: dict[str, list[int]] = {"victims": [], "attacker": []}
    deadline = time.monotonic() + seconds

    async def client(index: int, who: str) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            n = index
            while time.monotonic() < deadline:
                key = "attacker" if who == "attacker" else victims[n % len(victims)]
                rows = extreme if who == "attacker" else normal
                answer = await http.post(f"/predict/{key}", json={"inputs": rows})
                outcomes[who].append(answer.status_code)
                n += 1

    clients = [client(i, "victims") for i in range(16)]
    if attacker:
        clients.append(client(0, "attacker"))
    await asyncio.gather(*clients)
    failed = sum(code != 200 for code in outcomes["victims"])
    return {
        "victim_requests": len(outcomes["victims"]),
        "victim_failed": failed,
        "attacker_statuses": sorted(set(outcomes["attacker"])),
    }


def attack_predict(directory: Path, seconds: float) -> dict[str, Any]:
    figures = {}
    for label, attacker in (("clean", False), ("attacked", True)):
        with served(directory, f"predict-{label}") as base:
            figures[label] = asyncio.run(_predict_load(base, seconds, attacker))
    return figures


# scale and random ---------------------------------------------------------------------------


def _learn(base: str, attack: str | None, rows_per_tenant: int) -> list[float]:
    """The victims' test accuracies after the tenants stream, with `attack` beside it."""
    stream = TenantsStream(tenants=16, rows_per_tenant=rows_per_tenant, block_rows=50, seed=0)
    keys = [f"tenant-{t}" for t in range(16)]
    register(base, [*keys, "attacker"])
    rng = np.random.default_rng(1)
    with httpx.Client(base_url=base, timeout=120) as http:
        for position in range(len(stream)):
            tenant, x, y = stream.block(position)
            http.post(f"/train/{keys[tenant]}", json={"inputs": x.tolist(), "labels": y.tolist()})
            if attack is not None:
                noise = x.numpy() * (1e6 if attack == "scale" else 1.0)
                labels = rng.integers(0, 10, len(noise)).tolist()
                http.post("/train/attacker", json={"inputs": noise.tolist(), "labels": labels})
        # The queue is drained in order: once this batch is applied, everything before it is.
        last = http.post(
            f"/train/{keys[0]}?wait=true", json={"inputs": x[:1].tolist(), "labels": y[:1].tolist()}
        )
        last.raise_for_status()
        accuracies = []
        for tenant, key in enumerate(keys):
            x_test, y_test = stream.test_set(tenant)
            answer = http.post(
                f"/predict/{key}?probabilities=false", json={"inputs": x_test.tolist()}
            )
            predicted = np.asarray(answer.json()["predictions"])
            accuracies.append(float((predicted == y_test.numpy()).mean()))
    return accuracies


def attack_learning(directory: Path, attack: str, rows_per_tenant: int) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for label, attacker in (("clean", None), ("attacked", attack)):
        with served(directory, f"{attack}-{label}") as base:
            started = time.monotonic()
            accuracies = _learn(base, attacker, rows_per_tenant)
        figures[label] = {
            "mean": statistics.mean(accuracies),
            "worst": min(accuracies),
            "seconds": time.monotonic() - started,
        }
    figures["mean_points_lost"] = 100 * (figures["clean"]["mean"] - figures["attacked"]["mean"])
    figures["worst_points_lost"] = 100 * (figures["clean"]["worst"] - figures["attacked"]["worst"])
    return figures


# flood --------------------------------------------------------------------------------------


async def _flood(base: str, seconds: float) -> dict[str, Any]:
    victims = [f"victim-{i}" for i in range(8)]
    register(base, [*victims, "flooder"])
    big = {"inputs": np.random.default_rng(2).random((4096, 64)).tolist(), "labels": [1] * 4096}
    small = {"inputs": np.random.default_rng(3).random((50, 64)).tolist(), "labels": [2] * 50}
    codes: dict[str, list[int]] = {"victims": [], "flooder": []}
    deadline = time.monotonic() + seconds

    async def flooder() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            while time.monotonic() < deadline:
                codes["flooder"].append((await http.post("/train/flooder", json=big)).status_code)

    async def victim(key: str) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            while time.monotonic() < deadline:
                codes["victims"].append((await http.post(f"/train/{key}", json=small)).status_code)
                await asyncio.sleep(0.05)

    await asyncio.gather(*(flooder() for _ in range(4)), *(victim(k) for k in victims))
    return {
        "victim_posts": len(codes["victims"]),
        "victim_429": codes["victims"].count(429),
        "flooder_posts": len(codes["flooder"]),
        "flooder_429": codes["flooder"].count(429),
    }


def attack_flood(directory: Path, seconds: float) -> dict[str, Any]:
    with served(directory, "flood") as base:
        return asyncio.run(_flood(base, seconds))


# refusal ------------------------------------------------------------------------------------


async def _refusals(base: str, rounds: int) -> dict[str, Any]:
    victims = [f"victim-{i}" for i in range(8)]
    register(base, [*victims, "poisoner", "busy"])
    rows = np.random.default_rng(4).random((64, 64)).tolist()
    refused = {"victim_batches": 0, "victim_refused_batches": 0, "poisoner_refused": 0}

    async def victim(http: httpx.AsyncClient, key: str) -> None:
        answer = await http.post(
            f"/train/{key}?wait=true", json={"inputs": rows, "labels": [3] * 64}
        )
        refused["victim_batches"] += 1
        refused["victim_refused_batches"] += not answer.json()["applied"]

    async def poisoner(http: httpx.AsyncClient) -> None:
        body = {"inputs": [[EXTREME] * 64], "labels": [1]}
        answer = await http.post("/train/poisoner?wait=true", json=body)
        refused["poisoner_refused"] += not answer.json()["applied"]

    async with httpx.AsyncClient(base_url=base, timeout=120) as http:
        for _ in range(rounds):
            # A burst in one turn, so that the trainer reads the entries together.
            await http.post("/train/busy", json={"inputs": rows * 8, "labels": [0] * 512})
            await asyncio.gather(*(victim(http, k) for k in victims), poisoner(http))
    return refused


def attack_refusal(directory: Path, rounds: int) -> dict[str, Any]:
    figures = {}
    for label, env in (("scaled", {}), ("unscaled", {"PSP_MODEL__INPUT_SCALING": "none"})):
        with served(directory, f"refusal-{label}", env) as base:
            figures[label] = asyncio.run(_refusals(base, rounds))
    return figures


# busy ---------------------------------------------------------------------------------------


def _stream_seconds(base: str, out: Path) -> float:
    started = time.monotonic()
    subprocess.run(
        [
            *psp_command(),
            "bench",
            "continual",
            *("--stream", "permuted-digits", "--tasks", "10", "--steps-per-task", "50"),
            *("--kinds", "complex-replay", "--via-http", base, "--out", str(out)),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.monotonic() - started


def attack_busy(directory: Path, threads: list[str]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for setting in threads:
        env = {} if setting == "default" else {"PSP_TORCH_THREADS": setting}
        times = {}
        for label in ("quiet", "busy"):
            busy = None
            if label == "busy":
                busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            try:
                with served(directory, f"busy-{setting}-{label}", env) as base:
                    times[label] = _stream_seconds(base, directory / f"out-{setting}-{label}")
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
        figures[f"threads={setting}"] = {**times, "ratio": times["busy"] / times["quiet"]}
    return figures


# --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated")
    parser.add_argument("--seconds", type=float, default=10, help="of the predict and flood loads")
    parser.add_argument("--rows-per-tenant", type=int, default=1500)
    parser.add_argument("--refusal-rounds", type=int, default=20)
    parser.add_argument(
        "--busy-threads",
        default="default,2",
        help="PSP_TORCH_THREADS values for the busy run ('default': the service's own)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    print(machine_line())
    results: dict[str, Any] = {}
    with throwaway_dir() as directory:
        for attack in args.attacks.split(","):
            started = time.monotonic()
            if attack == "predict":
                results[attack] = attack_predict(directory, args.seconds)
            elif attack in ("scale", "random"):
                results[attack] = attack_learning(directory, attack, args.rows_per_tenant)
            elif attack == "flood":
                results[attack] = attack_flood(directory, args.seconds)
            elif attack == "refusal":
                results[attack] = attack_refusal(directory, args.refusal_rounds)
            elif attack == "busy":
                results[attack] = attack_busy(directory, args.busy_threads.split(","))
            else:
                parser.error(f"unknown attack {attack!r}; choose from {', '.join(ATTACKS)}")
            print(f"{attack} ({time.monotonic() - started:.0f} s): {results[attack]}", flush=True)
    if args.json:
        save_json(str(args.json), results)


if __name__ == "__main__":
    main()
