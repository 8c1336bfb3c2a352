"""What the serving-load benchmarks share: their model and service options, the `psp serve`
settings those imply, the bare endpoint they are measured against, and the run's frame (header,
throwaway directory, figures file).

The benchmarks: `predict_throughput.py` (P4), `training_throughput.py` (P5) and
`registry_scale.py` (P6).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _harness import load_average, machine_line, save_json, throwaway_dir
from _server_env import model_env, torch_thread_env

from service.testing.processes import ServerProcess, free_port

MAX_REQUESTS_PER_SECOND = 50_000
"""Bound on requests a load loop may start per second of its duration (a safety stop)."""


def add_load_options(parser: argparse.ArgumentParser, measured: str) -> None:
    """How long each `measured` thing (a target, a path) is loaded, and over how many contexts."""
    parser.add_argument(
        "--seconds", type=float, default=15, help=f"measured seconds per {measured}"
    )
    parser.add_argument("--warmup", type=float, default=3, help=f"warm-up seconds per {measured}")
    parser.add_argument("--contexts", type=int, default=1000, help="registered contexts")


def add_service_options(parser: argparse.ArgumentParser) -> None:
    """The model, the service's settings and `--json`: options every serving benchmark takes."""
    parser.add_argument(
        "--max-delay-us",
        type=int,
        default=None,
        help="PSP_BATCHER__MAX_DELAY_US for the service (default: the service's own)",
    )
    parser.add_argument(
        "--registry-poll-seconds",
        type=float,
        default=None,
        help="PSP_REGISTRY_POLL_SECONDS for the service (default: the service's own)",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="OMP_NUM_THREADS of every server and torch threads of the raw loop; 0 leaves "
        "torch's default (one per core)",
    )
    parser.add_argument("--kind", default="complex")
    parser.add_argument("--input", type=int, default=64)
    parser.add_argument(
        "--hidden", type=lambda s: tuple(int(v) for v in s.split(",")), default=(256, 256)
    )
    parser.add_argument("--json", default=None, help="save the figures to this JSON file")


def service_env(args: argparse.Namespace, data_dir: Path) -> dict[str, str]:
    """Settings shared by every `psp serve` of these benchmarks (embedded stores by default)."""
    env = {"PSP_DATA_DIR": str(data_dir), **model_env(args.input, args.hidden, args.kind)}
    if args.max_delay_us is not None:
        env["PSP_BATCHER__MAX_DELAY_US"] = str(args.max_delay_us)
    if args.registry_poll_seconds is not None:
        env["PSP_REGISTRY_POLL_SECONDS"] = str(args.registry_poll_seconds)
    return {**env, **torch_thread_env(args.torch_threads)}


def bare_server(args: argparse.Namespace, mode: str, workdir: Path) -> ServerProcess:
    """The bare endpoint (`bare_endpoint.py`) under uvicorn, in `thread` or `inline` mode, for
    `args.contexts` contexts of the model `args.kind`, `args.input`, `args.hidden`."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "bare_endpoint:create_app",
        "--factory",
        "--app-dir",
        str(Path(__file__).parent),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    env = {
        "BARE_MODE": mode,
        "BARE_KIND": args.kind,
        "BARE_INPUT": str(args.input),
        "BARE_HIDDEN": ",".join(map(str, args.hidden)),
        "BARE_CONTEXTS": str(args.contexts),
        **torch_thread_env(args.torch_threads),
    }
    return ServerProcess(f"bare-{mode}", command, env, port, workdir / f"bare-{mode}.log")


Measurement = Callable[[argparse.Namespace, Path], dict[str, Any]]
"""One benchmark's measurement: gets the options and a throwaway directory, returns figures."""


def run_benchmark(name: str, part: str, measure: Measurement, args: argparse.Namespace) -> None:
    """Prints the machine and the settings, runs `measure` in a throwaway directory, and saves
    its figures under `part` in the `--json` file."""
    delay = "default" if args.max_delay_us is None else args.max_delay_us
    poll = "default" if args.registry_poll_seconds is None else args.registry_poll_seconds
    print(f"{name}: {machine_line()}")
    print(
        f"model {args.kind} {args.input}-{'-'.join(map(str, args.hidden))}-10 on cpu; "
        f"PSP_BATCHER__MAX_DELAY_US={delay}; PSP_REGISTRY_POLL_SECONDS={poll}; "
        f"OMP_NUM_THREADS={args.torch_threads or 'default'}; "
        "the load generator runs in this process and shares the cores"
    )
    figures: dict[str, Any] = {"machine": machine_line(), "args": vars(args)}
    with throwaway_dir() as workdir:
        figures[part] = measure(args, workdir)
    figures["load_average_end"] = load_average()
    print(f"\nload average at the end: {figures['load_average_end']}")
    save_json(args.json, figures)
