"""Weights staleness: how long after the worker writes a checkpoint the API serves it.

`psp worker` (PSP_ROLE=worker) trains from Redis and checkpoints every `--checkpoint-seconds`
(or `--checkpoint-steps` steps); `psp serve` with PSP_ROLE=api follows it, sharing PostgreSQL,
Redis and PSP_DATA_DIR. While train batches stream in and predict clients run, two figures:

- internal: the API's `psp_checkpoint_staleness_seconds` histogram (time from the worker's
  announcement timestamp, taken right after the file is durable, to the swap being done): mean
  exact from sum/count, p50/p99 interpolated inside the buckets like Prometheus'
  `histogram_quantile`.
- external: GET /model on the API is polled every `--poll-ms`; for each model version the time
  its first answer came back minus the mtime of its file `ckpt-<seq>-v<version>.safetensors`.
  Exact up to the poll period (reported), which it can only overstate.

Also: predict requests answered non-200 while the weights were swapped (goal 0).

Run: `python benchmarks/staleness.py [--seconds 30] [--checkpoint-seconds 0.5] [--json PATH]`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _cpu_usage import CpuWatch
from _harness import (
    load_average,
    machine_line,
    ms,
    percentile,
    print_table,
    save_json,
    throwaway_dir,
)
from _load import Recorder, drive, run_async
from _prometheus import histogram_buckets, histogram_quantile, metric_value, scrape
from _service_requests import (
    JSON_HEADERS,
    json_bodies,
    predict_one,
    register_contexts,
    train_bodies,
)
from _stores import throwaway_stores

from service.testing.processes import psp_serve, psp_worker, running

CHECKPOINT_NAME = re.compile(r"^ckpt-(\d+)-v(\d+)\.safetensors$")
STALENESS = "psp_checkpoint_staleness_seconds"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30, help="seconds of streaming")
    parser.add_argument("--checkpoint-seconds", type=float, default=0.5)
    parser.add_argument("--checkpoint-steps", type=int, default=200)
    parser.add_argument("--contexts", type=int, default=100)
    parser.add_argument("--train-clients", type=int, default=2)
    parser.add_argument("--train-rows", type=int, default=32)
    parser.add_argument(
        "--train-pause-ms", type=float, default=10, help="pause of each train client per request"
    )
    parser.add_argument("--predict-clients", type=int, default=4)
    parser.add_argument("--poll-ms", type=float, default=5, help="GET /model poll period")
    parser.add_argument("--json", default=None, help="save the figures to this JSON file")
    return parser.parse_args(argv)


@dataclass
class Observations:
    """What the clients saw on the API.

    Attributes:
        first_seen: Model version -> wall time (time.time()) its first GET /model answer came.
        last_answer: Wall time of the poller's last answer.
        poll_gaps: Seconds between consecutive GET /model answers.
    """

    first_seen: dict[int, float] = field(default_factory=dict)
    last_answer: float = 0.0
    poll_gaps: list[float] = field(default_factory=list)
    predict: Recorder = field(default_factory=Recorder)
    train: Recorder = field(default_factory=Recorder)


async def poll_model(base_url: str, seconds: float, period: float, seen: Observations) -> None:
    """Polls GET /model every `period` seconds for `seconds`, noting new versions."""
    deadline = time.perf_counter() + seconds
    last_answer: float | None = None
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            response = await client.get("/model")
            answered = time.time()
            version = int(response.json()["model_version"])
            seen.first_seen.setdefault(version, answered)
            if last_answer is not None:
                seen.poll_gaps.append(answered - last_answer)
            last_answer = seen.last_answer = answered
            await asyncio.sleep(max(0.0, period - (time.perf_counter() - sent)))


async def stream(base_url: str, args: argparse.Namespace, seen: Observations) -> None:
    """Train batches, predicts and the GET /model poller, all for `--seconds`."""
    keys = [f"stale-{n:04d}" for n in range(args.contexts)]
    rng = np.random.default_rng(0)
    predicts = json_bodies(rng, 64, 1, 64)
    trains = train_bodies(rng, 32, args.train_rows, 64)
    pick = random.Random(0)

    async def train(client: httpx.AsyncClient, number: int) -> None:
        url = f"/train/{pick.choice(keys)}"
        await seen.train.send(
            client, "train", "POST", url, content=pick.choice(trains), headers=JSON_HEADERS
        )
        await asyncio.sleep(args.train_pause_ms / 1000)

    async def predict(client: httpx.AsyncClient, number: int) -> None:
        await predict_one(seen.predict, client, pick, keys, predicts)

    bound = int(args.seconds * 50_000)
    await asyncio.gather(
        drive(
            base_url,
            train,
            clients=args.train_clients,
            seconds=args.seconds,
            max_operations=bound,
        ),
        drive(
            base_url,
            predict,
            clients=args.predict_clients,
            seconds=args.seconds,
            max_operations=bound,
        ),
        poll_model(base_url, args.seconds, args.poll_ms / 1000, seen),
    )


def checkpoint_mtimes(directory: Path) -> dict[int, float]:
    """Model version -> mtime of its checkpoint file (the earliest if several share it)."""
    found: dict[int, float] = {}
    for path in directory.iterdir():
        match = CHECKPOINT_NAME.match(path.name)
        if match:
            version = int(match[2])
            found[version] = min(found.get(version, float("inf")), path.stat().st_mtime)
    return found


def external_staleness(mtimes: dict[int, float], seen: Observations) -> tuple[list[float], int]:
    """Seen-minus-written seconds of every version the poller saw, and how many versions
    written at least a second before polling stopped it never saw (swapped in and out again
    within one poll period)."""
    delays = [seen.first_seen[v] - mtimes[v] for v in sorted(mtimes) if v in seen.first_seen]
    missed = sum(
        1 for v, m in mtimes.items() if v not in seen.first_seen and m < seen.last_answer - 1
    )
    return delays, missed


def histogram_figures(samples: list[tuple[str, dict[str, str], float]]) -> dict[str, float]:
    """Count, mean, p50 and p99 of the API's staleness histogram."""
    count = metric_value(samples, f"{STALENESS}_count")
    total = metric_value(samples, f"{STALENESS}_sum")
    buckets = histogram_buckets(samples, STALENESS)
    return {
        "count": count,
        "mean_s": total / count if count else float("nan"),
        "p50_s": histogram_quantile(buckets, 0.50),
        "p99_s": histogram_quantile(buckets, 0.99),
    }


@dataclass
class Staleness:
    """What one run measured.

    Attributes:
        internal: Count, mean, p50 and p99 of the API's staleness histogram.
        delays: External staleness of every version the poller saw, in seconds.
        missed: Versions written a second or more before polling stopped that it never saw.
        files: Checkpoint files written.
        written: Checkpoints written by the worker's metric.
        write_seconds: The worker's total seconds spent writing them.
        poll: Mean seconds between GET /model answers.
        predicts: Predict requests answered.
        failed_predicts: Predicts answered non-200 or not at all.
        failed_trains: Train requests answered non-202 or not at all.
        load: Load averages at the start.
        others: Which other processes used the CPU while streaming.
    """

    internal: dict[str, float]
    delays: list[float]
    missed: int
    files: int
    written: float
    write_seconds: float
    poll: float
    predicts: int
    failed_predicts: int
    failed_trains: int
    load: str
    others: str

    @property
    def write_mean(self) -> float | None:
        return self.write_seconds / self.written if self.written else None

    @property
    def passed(self) -> bool:
        return self.failed_predicts == 0 and bool(self.delays)


def shared_env(args: argparse.Namespace, workdir: Path, stores: dict[str, str]) -> dict[str, str]:
    """The settings both the worker and the API run with."""
    return {
        "PSP_DATA_DIR": str(workdir / "data"),
        **stores,
        "PSP_DEVICE": "cpu",
        "PSP_CHECKPOINT__EVERY_SECONDS": str(args.checkpoint_seconds),
        "PSP_CHECKPOINT__EVERY_STEPS": str(args.checkpoint_steps),
        # Every file stays on disk, so each version's mtime can be read after the run.
        "PSP_CHECKPOINT__KEEP": "100000",
    }


def measure(args: argparse.Namespace) -> Staleness:
    """Starts the worker and the API on throwaway stores, streams for `--seconds`, and reads
    both /metrics pages and the checkpoint files."""
    seen = Observations()
    with throwaway_dir() as workdir, throwaway_stores(postgres=True, redis=True) as stores:
        env = shared_env(args, workdir, stores)
        worker = psp_worker("worker", env, workdir)
        api = psp_serve("api", {**env, "PSP_ROLE": "api"}, workdir)
        with running(worker, api):
            register_contexts(api.base_url, [f"stale-{n:04d}" for n in range(args.contexts)])
            load = load_average()
            watch = CpuWatch([api.pid, worker.pid])
            run_async(stream(api.base_url, args, seen))
            others = watch.line()
            api_samples = scrape(api.base_url)
            worker_samples = scrape(worker.base_url)
            mtimes = checkpoint_mtimes(workdir / "data" / "checkpoints")
    delays, missed = external_staleness(mtimes, seen)
    return Staleness(
        internal=histogram_figures(api_samples),
        delays=delays,
        missed=missed,
        files=len(mtimes),
        written=metric_value(worker_samples, "psp_checkpoint_duration_seconds_count"),
        write_seconds=metric_value(worker_samples, "psp_checkpoint_duration_seconds_sum"),
        poll=float(np.mean(seen.poll_gaps)) if seen.poll_gaps else float("nan"),
        predicts=len(seen.predict.latencies["predict"]),
        failed_predicts=seen.predict.non_ok("predict"),
        failed_trains=seen.train.non_ok("train", ok=(202,)),
        load=load,
        others=others,
    )


def print_report(figures: Staleness) -> None:
    internal, delays = figures.internal, figures.delays
    print()
    print_table(
        ["measure", "swaps", "mean ms", "p50 ms", "p99 ms", "max ms"],
        [
            [
                "internal (API histogram)",
                f"{internal['count']:.0f}",
                ms(internal["mean_s"]),
                ms(internal["p50_s"]) + " ~",
                ms(internal["p99_s"]) + " ~",
                "",
            ],
            [
                "external (GET /model vs mtime)",
                len(delays),
                ms(float(np.mean(delays)) if delays else float("nan")),
                ms(percentile(delays, 50)),
                ms(percentile(delays, 99)),
                ms(max(delays, default=float("nan"))),
            ],
        ],
    )
    write_mean = figures.write_mean
    print(
        f"  ~ interpolated inside histogram buckets; GET /model answered every "
        f"{ms(figures.poll)} ms"
    )
    print(
        f"  checkpoints written: {figures.files} files ({figures.written:.0f} by the worker's "
        f"metric, mean write {ms(write_mean if write_mean is not None else float('nan'))} ms); "
        f"versions never seen by the poller: {figures.missed}"
    )
    print(
        f"  predicts during the run: {figures.predicts:,}, non-200: {figures.failed_predicts}"
        f"   goal 0;  train requests non-202: {figures.failed_trains}"
    )
    print(f"  load average at start {figures.load}, end {load_average()}; {figures.others}")
    print("PASS" if figures.passed else "FAIL")


def json_figures(args: argparse.Namespace, figures: Staleness) -> dict[str, Any]:
    delays = figures.delays
    return {
        "machine": machine_line(),
        "args": vars(args),
        "internal": figures.internal,
        "external": {
            "swaps_seen": len(delays),
            "mean_s": float(np.mean(delays)) if delays else None,
            "p50_s": percentile(delays, 50),
            "p99_s": percentile(delays, 99),
            "max_s": max(delays, default=None),
            "poll_period_s": figures.poll,
            "versions_not_seen": figures.missed,
        },
        "checkpoint_files": figures.files,
        "checkpoint_write_mean_s": figures.write_mean,
        "predicts": figures.predicts,
        "predict_non_200": figures.failed_predicts,
        "train_non_202": figures.failed_trains,
        "load_average_start": figures.load,
        "other_processes": figures.others,
        "passed": figures.passed,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"staleness: {machine_line()}")
    print(
        f"psp worker + psp serve (PSP_ROLE=api), PostgreSQL + Redis, shared PSP_DATA_DIR; "
        f"checkpoint every {args.checkpoint_seconds:g} s or {args.checkpoint_steps} steps; "
        f"{args.train_clients} train clients ({args.train_rows} rows, "
        f"{args.train_pause_ms:g} ms pause), {args.predict_clients} predict clients, "
        f"GET /model every {args.poll_ms:g} ms, {args.seconds:g} s"
    )
    figures = measure(args)
    print_report(figures)
    save_json(args.json, json_figures(args, figures))
    return 0 if figures.passed else 1


if __name__ == "__main__":
    sys.exit(main())
