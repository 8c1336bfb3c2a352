"""What every benchmark run shares: where it ran, a scratch directory, and its report.

The benchmarks talk only to 127.0.0.1. Their servers run as child processes on free ports
(`service.testing.processes`, shared with the tests), each with a fresh data directory and,
when asked, a throwaway PostgreSQL database and Redis key prefix, all removed afterwards.

The rest of the harness, one job a module: `_cpu_usage` (which processes used the CPU),
`_stores` (throwaway PostgreSQL databases and Redis key prefixes), `_server_env` (a server's
model and thread settings), `_prometheus` (reading /metrics), `_load` (the closed-loop load
generator) and `_service_requests` (prebuilt bodies, registration and predicts).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

# Machine ------------------------------------------------------------------------------------


def load_average() -> str:
    """`uptime`-style 1/5/15-minute load averages, to print beside every measurement."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def machine_line() -> str:
    """One line describing where the figures were measured."""
    import torch

    return (
        f"cpus {os.cpu_count()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"python {sys.version.split()[0]}, load average {load_average()}"
    )


# Scratch directory --------------------------------------------------------------------------


@contextlib.contextmanager
def throwaway_dir() -> Iterator[Path]:
    """A temporary directory (data dir, logs), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="psp-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# Report -------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The exact q-th percentile (0..100, linear interpolation); NaN for no values."""
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def ms(seconds: float) -> str:
    """Seconds as milliseconds with two decimals, for tables."""
    return f"{seconds * 1e3:.2f}"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain aligned text table: the first column left-aligned, the others right-aligned."""
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for number, row in enumerate(cells):
        line = "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        )
        print("  " + line)
        if number == 0:
            print("  " + "  ".join("-" * w for w in widths))


def save_json(path: str | None, figures: dict[str, Any]) -> None:
    """Writes the figures of one run to `path` (when given) as indented JSON."""
    if path:
        Path(path).write_text(json.dumps(figures, indent=2, default=float) + "\n")
        print(f"figures saved to {path}")


# Order of measurements ----------------------------------------------------------------------


T = TypeVar("T")


def alternating(targets: Sequence[T], rounds: int) -> Iterator[tuple[int, T]]:
    """(round, target) for `rounds` rounds over `targets`, every other round in reverse order,
    so that drift in the machine's load hits every target alike."""
    for number in range(rounds):
        for target in targets if number % 2 == 0 else targets[::-1]:
            yield number, target
