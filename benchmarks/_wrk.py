"""Load from wrk, a C HTTP load generator (Debian's `wrk` package), which costs the servers'
cores almost nothing: the predict benchmarks' `--client wrk`.

    apt-get install wrk
"""

from __future__ import annotations

import random
import re
import resource
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).with_name("wrk_predict.lua")
REQUESTS_IN_THE_LIST = 4096
"""Distinct (key, body) requests wrk cycles through."""

_RESULT = re.compile(
    r"PSP_WRK requests=(\d+) duration_us=(\d+) non2xx=(\d+) errors=(\d+) p50_us=(\d+) "
    r"p99_us=(\d+)"
)


@dataclass(frozen=True)
class WrkRun:
    """What one wrk run measured.

    Attributes:
        answered: Requests answered 2xx.
        failed: Non-2xx answers, and connect, read, write and timeout errors.
        seconds: How long wrk ran.
        p50_s, p99_s: Latency percentiles over every request.
        client_cpu: CPU seconds wrk itself used.
    """

    answered: int
    failed: int
    seconds: float
    p50_s: float
    p99_s: float
    client_cpu: float


def wrk_predict(
    base_url: str,
    keys: list[str],
    bodies: list[bytes],
    *,
    clients: int,
    seconds: float,
    seed: int,
    threads: int = 2,
) -> WrkRun:
    """`clients` keep-alive connections predicting one row for random keys for `seconds`."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as directory:
        listed = Path(directory) / "requests.tsv"
        lines = (
            f"{rng.choice(keys)}\t{rng.choice(bodies).decode()}\n"
            for _ in range(REQUESTS_IN_THE_LIST)
        )
        listed.write_text("".join(lines))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        whole_seconds = max(1, round(seconds))  # wrk refuses "3.3s"
        command = ["wrk", "-t", str(threads), "-c", str(clients), "-d", f"{whole_seconds}s"]
        command += ["--latency", "-s", str(SCRIPT), base_url, "--", str(listed)]
        output = subprocess.run(
            command, capture_output=True, text=True, check=True, timeout=seconds + 60
        ).stdout
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    found = _RESULT.search(output)
    if found is None:
        raise RuntimeError(f"wrk printed no result line:\n{output}")
    requests, duration_us, non_2xx, errors, p50_us, p99_us = map(int, found.groups())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return WrkRun(
        answered=requests - non_2xx,
        failed=non_2xx + errors,
        seconds=duration_us / 1e6,
        p50_s=p50_us / 1e6,
        p99_s=p99_us / 1e6,
        client_cpu=cpu,
    )
