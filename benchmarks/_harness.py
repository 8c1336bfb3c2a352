"""Shared helpers of the HTTP benchmarks: throwaway stores, load, CPU accounting, maths.

Everything here talks only to 127.0.0.1. Servers run as child processes on free ports
(`service.testing.processes`, shared with the tests), with a fresh data directory, and (when
asked) a throwaway PostgreSQL database and a unique Redis key prefix, all removed afterwards.
The load generator is an `httpx.AsyncClient` per simulated client; every load loop stops by
itself after a bounded number of requests or seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import psycopg
import redis
from prometheus_client.parser import text_string_to_metric_families

POSTGRES_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
"""Trust-auth admin connection used to create and drop throwaway databases."""

REDIS_URL = "redis://127.0.0.1:6379/0"
"""The shared Redis; each run isolates itself with its own key prefix."""


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


def _total_jiffies() -> int:
    """CPU jiffies of all cores since boot, busy or idle, from /proc/stat."""
    with open("/proc/stat") as stat:
        return sum(int(v) for v in stat.readline().split()[1:])


def _process_table() -> dict[int, tuple[str, int]]:
    """pid -> (command name, utime + stime in jiffies) of every process now."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                head, tail = stat.read().rsplit(")", 1)
        except OSError:
            continue
        fields = tail.split()
        table[int(entry.name)] = (head.split("(", 1)[1], int(fields[11]) + int(fields[12]))
    return table


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process (all its threads) has used so far; 0 once gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def with_descendants(pids: Sequence[int]) -> list[int]:
    """`pids` and every process below them: a server's training child (role `all`) works
    for it, so its CPU counts as the server's."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                parents[int(entry.name)] = int(stat.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
    found, frontier = set(pids), list(pids)
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in found]
        found.update(children)
        frontier += children
    return sorted(found)


def find_pids(command_name: str) -> list[int]:
    """Processes whose command name (as in `ps -o comm`) is `command_name`."""
    return [pid for pid, (name, _) in _process_table().items() if name == command_name]


def _command_line(pid: int, width: int = 60) -> str:
    """The start of a process' command line, for naming it in reports."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            words = cmdline.read().split(b"\0")
    except OSError:
        return ""
    text = " ".join(
        Path(w.decode(errors="replace")).name if i == 0 else w.decode(errors="replace")
        for i, w in enumerate(words)
        if w
    )
    return text[:width]


class CpuWatch:
    """Which other processes used the machine's CPU while a measurement ran.

    Args:
        pids: The benchmark's own server processes, whose children (a training child) count
            as theirs; this process is always counted as own.
    """

    def __init__(self, pids: Sequence[int] = ()) -> None:
        self.pids = list(pids)
        self._start_total = _total_jiffies()
        self._start = _process_table()

    def others(self) -> tuple[float, list[tuple[str, float]]]:
        """The share of all cores that other processes used since the watch started (0.5: one
        of two cores busy throughout), and the busiest of them by command name."""
        span = (_total_jiffies() - self._start_total) or 1
        own = {os.getpid(), *with_descendants(self.pids)}
        by_name: Counter[str] = Counter()
        for pid, (name, jiffies) in _process_table().items():
            used = jiffies - self._start.get(pid, (name, 0))[1]
            if pid not in own and used > 0:
                by_name[_command_line(pid) or name] += used
        share = sum(by_name.values()) / span
        return share, [(name, used / span) for name, used in by_name.most_common(3) if used > 0]

    def line(self) -> str:
        """One line for the report, e.g. `other processes used 3% of the CPU (postgres 2%)`."""
        share, busiest = self.others()
        names = ", ".join(f"{name} {used:.0%}" for name, used in busiest)
        return f"other processes used {share:.0%} of the CPU" + (f" ({names})" if names else "")


# Throwaway stores ---------------------------------------------------------------------------


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """Creates an empty PostgreSQL database and yields its SQLAlchemy URL; drops it after."""
    name = f"psp_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_dsn(sqlalchemy_url: str) -> str:
    """The libpq form of a `postgresql+psycopg://` URL, for psycopg itself."""
    return sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://", 1)


@contextlib.contextmanager
def throwaway_redis_prefix() -> Iterator[str]:
    """Yields a unique `PSP_KEY_PREFIX` and deletes every key under it afterwards."""
    prefix = f"psp-bench-{uuid.uuid4().hex[:12]}:"
    try:
        yield prefix
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        try:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])
        finally:
            client.close()


@contextlib.contextmanager
def throwaway_stores(*, postgres: bool, redis: bool) -> Iterator[dict[str, str]]:
    """The registry and queue settings of a server: a throwaway PostgreSQL database and the
    shared Redis under a throwaway key prefix, each when asked (else the embedded stores)."""
    env: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        if postgres:
            env["PSP_DATABASE_URL"] = stack.enter_context(throwaway_postgres())
        if redis:
            env["PSP_REDIS_URL"] = REDIS_URL
            env["PSP_KEY_PREFIX"] = stack.enter_context(throwaway_redis_prefix())
        yield env


@contextlib.contextmanager
def throwaway_dir() -> Iterator[Path]:
    """A temporary directory (data dir, logs), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="psp-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# Server settings ----------------------------------------------------------------------------


def model_env(input_size: int, hidden: Sequence[int], kind: str) -> dict[str, str]:
    """The `PSP_MODEL__*` settings of an MLP of the given shape."""
    return {
        "PSP_MODEL__KIND": kind,
        "PSP_MODEL__INPUT_SHAPE": json.dumps([input_size]),
        "PSP_MODEL__HIDDEN": json.dumps(list(hidden)),
        "PSP_DEVICE": "cpu",
    }


def torch_thread_env(threads: int | None) -> dict[str, str]:
    """`OMP_NUM_THREADS` for a server process; nothing for None or 0 (torch's default, one
    thread per core)."""
    return {"OMP_NUM_THREADS": str(threads)} if threads else {}


# HTTP helpers -------------------------------------------------------------------------------


def register_contexts(base_url: str, keys: Sequence[str], chunk: int = 10_000) -> float:
    """Registers keys with `POST /contexts:batch`, `chunk` at a time.

    Returns:
        Wall seconds spent in the registration requests.
    """
    spent = 0.0
    with httpx.Client(base_url=base_url, timeout=600) as client:
        for start in range(0, len(keys), chunk):
            body = {"contexts": [{"key": key} for key in keys[start : start + chunk]]}
            began = time.perf_counter()
            response = client.post("/contexts:batch", json=body)
            spent += time.perf_counter() - began
            if response.status_code != 200:
                raise RuntimeError(f"registration failed: {response.status_code} {response.text}")
    return spent


def scrape(base_url: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of a Prometheus `/metrics` page as (name, labels, value)."""
    text = httpx.get(base_url + "/metrics", timeout=10).text
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def metric_value(
    samples: Sequence[tuple[str, dict[str, str], float]], name: str, **labels: str
) -> float:
    """The sum of the samples called `name` whose labels include `labels` (0 when absent)."""
    return sum(
        value
        for sample_name, sample_labels, value in samples
        if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())
    )


def histogram_buckets(
    samples: Sequence[tuple[str, dict[str, str], float]], name: str
) -> list[tuple[float, float]]:
    """The cumulative `(upper bound, count)` buckets of histogram `name`, in bound order."""
    buckets = [
        (float(labels["le"]), value)
        for sample_name, labels, value in samples
        if sample_name == f"{name}_bucket"
    ]
    return sorted(buckets)


# Statistics ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The exact q-th percentile (0..100, linear interpolation); NaN for no values."""
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def histogram_quantile(buckets: Sequence[tuple[float, float]], q: float) -> float:
    """Prometheus' `histogram_quantile`: q in 0..1, linear inside the bucket that holds it.

    Args:
        buckets: Cumulative `(upper bound, count)` pairs in bound order, ending with `+Inf`.
    """
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound  # beyond the last finite bound: report that bound
            width = count - lower_count
            share = (rank - lower_count) / width if width else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


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


# Load generation ----------------------------------------------------------------------------


@dataclass
class Recorder:
    """Latencies and outcomes of the requests of one load run, per route label.

    Attributes:
        latencies: Seconds from sending to the full answer, per route.
        statuses: Answers per (route, HTTP status).
        transport_errors: Requests per route that got no HTTP answer (refused, reset, timeout).
    """

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)

    async def send(
        self, client: httpx.AsyncClient, route: str, method: str, url: str, **kwargs: Any
    ) -> httpx.Response | None:
        """Sends one request and records it; None when no HTTP answer came back."""
        began = time.perf_counter()
        try:
            response = await client.request(method, url, **kwargs)
        except httpx.TransportError:
            self.transport_errors[route] += 1
            return None
        self.latencies[route].append(time.perf_counter() - began)
        self.statuses[route, response.status_code] += 1
        return response

    def count(self, route: str, status: int | None = None) -> int:
        """Answers of a route, all of them or those with one status."""
        return sum(n for (r, s), n in self.statuses.items() if r == route and status in (None, s))

    def non_ok(self, route: str, ok: Sequence[int] = (200,)) -> int:
        """Requests of a route that did not get one of the `ok` statuses (errors included)."""
        bad = sum(n for (r, s), n in self.statuses.items() if r == route and s not in ok)
        return bad + self.transport_errors[route]


Operation = Callable[[httpx.AsyncClient, int], Awaitable[None]]
"""One client's action: gets the client's own `httpx.AsyncClient` and the client number."""


async def drive(
    base_url: str,
    operation: Operation,
    *,
    clients: int,
    seconds: float,
    max_operations: int,
    timeout: float = 30.0,
) -> float:
    """Runs `clients` concurrent loops of `operation` until `seconds` have passed or
    `max_operations` operations have started, whichever comes first.

    Each client has its own `httpx.AsyncClient` (its own keep-alive connection). The clients
    are built before the clock starts: building one costs milliseconds (httpx prepares a TLS
    context even for plain HTTP), which would otherwise count against short runs.

    Returns:
        Wall seconds from the first operation to the end of the last one.
    """
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    pool = [
        httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits, verify=False)
        for _ in range(clients)
    ]

    async def step(number: int) -> bool:
        await operation(pool[number], number)
        return True

    try:
        return await closed_loops(clients, step, seconds=seconds, max_operations=max_operations)
    finally:
        for client in pool:
            await client.aclose()


async def closed_loops(
    clients: int,
    step: Callable[[int], Awaitable[bool]],
    *,
    seconds: float,
    max_operations: int,
) -> float:
    """`clients` concurrent loops, each calling `step(client number)` again as soon as the
    last call returned, until `seconds` have passed or `max_operations` calls have started,
    whichever comes first; a client whose `step` returns False stops.

    Returns:
        Wall seconds from the first call to the end of the last one.
    """
    started = 0
    began = time.perf_counter()
    deadline = began + seconds

    async def client_loop(number: int) -> None:
        nonlocal started
        while started < max_operations and time.perf_counter() < deadline:
            started += 1
            if not await step(number):
                return

    await asyncio.gather(*(client_loop(n) for n in range(clients)))
    return time.perf_counter() - began


def run_async(main: Awaitable[Any]) -> Any:
    """Runs a coroutine on uvloop when it is installed (a lighter load generator), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)  # type: ignore[arg-type]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)  # type: ignore[arg-type]


def json_bodies(rng: np.random.Generator, count: int, rows: int, width: int) -> list[bytes]:
    """`count` pre-encoded predict bodies of `rows` random rows, so that the load generator
    spends no time serialising."""
    return [
        json.dumps({"inputs": rng.random((rows, width)).round(4).tolist()}).encode()
        for _ in range(count)
    ]


def train_bodies(rng: np.random.Generator, count: int, rows: int, width: int) -> list[bytes]:
    """`count` pre-encoded train bodies of `rows` random rows and labels."""
    return [
        json.dumps(
            {
                "inputs": rng.random((rows, width)).round(4).tolist(),
                "labels": rng.integers(0, 10, rows).tolist(),
            }
        ).encode()
        for _ in range(count)
    ]


JSON_HEADERS = {"content-type": "application/json"}


async def predict_one(
    recorder: Recorder,
    client: httpx.AsyncClient,
    rng: random.Random,
    keys: Sequence[str],
    bodies: Sequence[bytes],
) -> httpx.Response | None:
    """POSTs a random one of `bodies` to `/predict/{key}` for a random one of `keys` (drawn in
    that order), recorded under the route `predict`."""
    key = keys[rng.randrange(len(keys))]
    body = bodies[rng.randrange(len(bodies))]
    return await recorder.send(
        client, "predict", "POST", f"/predict/{key}", content=body, headers=JSON_HEADERS
    )


def sequential_predicts(
    base_url: str, keys: Sequence[str], bodies: Sequence[bytes], count: int, seed: int
) -> list[float]:
    """Latencies of `count` predicts sent one after another by a single client (`predict_one`
    with `random.Random(seed)`).

    Raises:
        RuntimeError: A predict got no 200 answer.
    """
    recorder = Recorder()
    rng = random.Random(seed)

    async def operation(client: httpx.AsyncClient, number: int) -> None:
        await predict_one(recorder, client, rng, keys, bodies)

    run_async(drive(base_url, operation, clients=1, seconds=300, max_operations=count))
    if recorder.non_ok("predict"):
        raise RuntimeError(f"{recorder.non_ok('predict')} predicts failed on {base_url}")
    return recorder.latencies["predict"]


T = TypeVar("T")


def alternating(targets: Sequence[T], rounds: int) -> Iterator[tuple[int, T]]:
    """(round, target) for `rounds` rounds over `targets`, every other round in reverse order,
    so that drift in the machine's load hits every target alike."""
    for number in range(rounds):
        for target in targets if number % 2 == 0 else targets[::-1]:
            yield number, target
