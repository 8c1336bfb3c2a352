"""How many tenants one superposed model holds: accuracy against tenants per model, by width.

Each cell is one in-process `psp bench continual --stream tenants` run with the service's
learning defaults (complex contexts with rehearsal, label-permuted digits in blocks of 50 rows,
Adam 3e-4, clip 1.0, one pass) on an MLP of two hidden layers of the given width. The table
gives each cell's mean and 10th-percentile per-tenant accuracy and its wall time, and for each
width and rows per tenant the largest tenant count measured whose mean is at most a point below
that width's mean at the fewest tenants measured: the capacity rule of `PSP_SHARDS__CAPACITY`.

    python benchmarks/shard_capacity.py --widths 256,512,1024 --tenants 256,1024,4096 \\
        --rows 250,1000 --processes 2 --out bench-out/capacity.json

A 4,096-tenant cell of 250 rows on a 1024-wide model took 18 minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from psp_bench.continual import run_continual
from psp_bench.continual_config import ContinualConfig

POINT = 0.01
"""How far below its accuracy at the fewest tenants a model may fall and still count as
holding its tenants."""


def run_cell(job: tuple[int, int, int, int]) -> dict[str, Any]:
    """One (width, tenants, rows per tenant, seed) run."""
    width, tenants, rows, seed = job
    config = replace(
        ContinualConfig(),
        stream="tenants",
        tenants=tenants,
        rows_per_tenant=rows,
        block_rows=50,
        hidden=(width, width),
        methods=("complex-replay",),
        seed=seed,
    )
    started = time.perf_counter()
    result = run_continual(config).methods[0]
    accuracies = sorted(result.tenant_accuracy or [])
    return {
        "width": width,
        "tenants": tenants,
        "rows_per_tenant": rows,
        "seed": seed,
        "mean": statistics.fmean(accuracies),
        "p10": accuracies[len(accuracies) // 10],
        "seconds": time.perf_counter() - started,
    }


def capacity(cells: list[dict[str, Any]], width: int, rows: int) -> int | None:
    """The most tenants measured at `width` and `rows` whose mean is within `POINT` of the
    mean at the fewest tenants measured there; None if nothing was measured."""
    measured = sorted(
        (c for c in cells if c["width"] == width and c["rows_per_tenant"] == rows),
        key=lambda c: c["tenants"],
    )
    if not measured:
        return None
    floor = measured[0]["mean"] - POINT
    held = [c["tenants"] for c in measured if c["mean"] >= floor]
    return max(held)


def table(cells: list[dict[str, Any]]) -> str:
    """A Markdown table of the cells, then each width's capacity by rows per tenant."""
    lines = [
        "| width | rows per tenant | tenants | mean | 10th percentile | minutes |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    ordered = sorted(cells, key=lambda c: (c["width"], c["rows_per_tenant"], c["tenants"]))
    for c in ordered:
        lines.append(
            f"| {c['width']} | {c['rows_per_tenant']} | {c['tenants']} | {c['mean']:.3f} | "
            f"{c['p10']:.3f} | {c['seconds'] / 60:.1f} |"
        )
    lines.append("")
    for width in sorted({c["width"] for c in cells}):
        for rows in sorted({c["rows_per_tenant"] for c in cells}):
            held = capacity(cells, width, rows)
            if held is not None:
                lines.append(
                    f"width {width}, {rows} rows per tenant: holds {held} tenants within "
                    f"{POINT:.2f} of its fewest-tenant mean"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="256,512,1024")
    parser.add_argument("--tenants", default="256,1024")
    parser.add_argument("--rows", default="250,1000", help="rows per tenant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench-out/capacity.json"))
    args = parser.parse_args()
    jobs = [
        (int(width), int(tenants), int(rows), args.seed)
        for width in args.widths.split(",")
        for rows in args.rows.split(",")
        for tenants in args.tenants.split(",")
    ]
    # The largest cells first, so that the pool's two processes end together.
    jobs.sort(key=lambda job: -job[0] * job[1] * job[2])
    cells = []
    with ProcessPoolExecutor(args.processes) as pool:
        for cell in pool.map(run_cell, jobs):
            cells.append(cell)
            print(json.dumps(cell), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(cells, indent=1) + "\n")
    print(table(cells))


if __name__ == "__main__":
    main()
