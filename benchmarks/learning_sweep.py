"""Sweep of the training defaults: each candidate on the continual streams, over several seeds.

Every run is `psp bench continual` in-process with one method, so the figures are those of the
benchmark. A candidate sets any of `ContinualConfig`'s training fields, and its method:

    python benchmarks/learning_sweep.py \\
        --candidate "sgd-0.05: optimizer=sgd lr=0.05" \\
        --candidate "adam-1e-3: optimizer=adam lr=0.001" \\
        --streams tenants,permuted-10,permuted-50 --seeds 0,1,2 --processes 2

Streams: `tenants` (256 tenants x 1000 rows in blocks of 50), `permuted-10` and `permuted-50`
(permuted digits, 500 steps per task). The table gives, per stream, the mean over seeds, the
spread (largest minus smallest), and for the tenants stream the worst tenant's accuracy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from psp_bench.continual import run_continual
from psp_bench.continual_config import ContinualConfig

STREAMS: dict[str, dict[str, Any]] = {
    "tenants": {"stream": "tenants"},
    "permuted-10": {"stream": "permuted-digits", "tasks": 10, "steps_per_task": 500},
    "permuted-50": {"stream": "permuted-digits", "tasks": 50, "steps_per_task": 500},
}
_FIELD_TYPES = {f.name: f.type for f in fields(ContinualConfig)}


def parse_candidate(text: str) -> tuple[str, dict[str, Any]]:
    """`"name: key=value key=value"` -> (name, overrides of `ContinualConfig`)."""
    name, _, assignments = text.partition(":")
    overrides: dict[str, Any] = {"methods": ("complex-replay",)}
    for assignment in assignments.split():
        key, _, value = assignment.partition("=")
        if key == "method":
            overrides["methods"] = (value,)
        elif key == "clip_norm":
            overrides[key] = None if value == "none" else float(value)
        elif key in ("lr", "momentum"):
            overrides[key] = float(value)
        elif key in ("replay_rows", "replay_per_step", "batch_size"):
            overrides[key] = int(value)
        elif key == "optimizer":
            overrides[key] = value
        else:
            raise SystemExit(f"unknown setting {key!r} in candidate {text!r}")
    return name.strip(), overrides


def run_one(job: tuple[str, str, int, dict[str, Any]]) -> dict[str, Any]:
    """One (candidate, stream, seed) run."""
    candidate, stream, seed, overrides = job
    config = replace(ContinualConfig(), **STREAMS[stream], **overrides, seed=seed)
    started = time.perf_counter()
    result = run_continual(config).methods[0]
    return {
        "candidate": candidate,
        "stream": stream,
        "seed": seed,
        "method": result.method,
        "accuracy": result.average_accuracy,
        "minimum": result.minimum_accuracy,
        "refused_steps": result.refused_steps,
        "seconds": time.perf_counter() - started,
    }


def summarise(rows: list[dict[str, Any]], candidates: list[str], streams: list[str]) -> str:
    """A Markdown table: per stream, the mean over seeds / the spread / the worst minimum."""
    header = ["candidate", *(f"{stream} mean / spread / min" for stream in streams)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for candidate in candidates:
        cells = [candidate]
        for stream in streams:
            runs = [r for r in rows if r["candidate"] == candidate and r["stream"] == stream]
            if not runs:
                cells.append("")
                continue
            accuracies = [r["accuracy"] for r in runs]
            spread = max(accuracies) - min(accuracies)
            worst = min(r["minimum"] for r in runs)
            cells.append(f"{statistics.fmean(accuracies):.3f} / {spread:.3f} / {worst:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _summarise_files(paths: list[Path]) -> None:
    """Prints the table of earlier runs' JSON files (`--summarise a.json b.json`)."""
    rows = [row for path in paths for row in json.loads(path.read_text())]
    candidates = list(dict.fromkeys(row["candidate"] for row in rows))
    streams = list(dict.fromkeys(row["stream"] for row in rows))
    print(summarise(rows, candidates, streams))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidate", action="append", default=[])
    parser.add_argument("--summarise", nargs="+", type=Path, help="tables of earlier runs")
    parser.add_argument("--streams", default="tenants,permuted-10")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench-out/sweep.json"))
    args = parser.parse_args()
    if args.summarise:
        _summarise_files(args.summarise)
        return
    if not args.candidate:
        parser.error("name at least one --candidate, or --summarise earlier results")
    candidates = [parse_candidate(text) for text in args.candidate]
    streams = args.streams.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = [
        (name, stream, seed, overrides)
        for name, overrides in candidates
        for stream in streams
        for seed in seeds
    ]
    with ProcessPoolExecutor(args.processes) as pool:
        rows = []
        for row in pool.map(run_one, jobs):
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    print(summarise(rows, [name for name, _ in candidates], streams))


if __name__ == "__main__":
    main()
