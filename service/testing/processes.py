"""Real processes on loopback: `psp serve`, `psp worker`, any HTTP server, a private redis-server.

The tests and the benchmarks both start these, and share this one module to do it. It lives in
the installed `service` package because that is the one place both can import: the benchmarks
run as scripts (`python benchmarks/NAME.py`, so only `benchmarks/` and installed packages are
on their path) and the tests must not import from `benchmarks/`, which is not a package. Nothing
in `service` imports it, so the running service never loads it, and it needs only the service's
own dependencies (httpx), nothing of pytest's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    predicate: Callable[[], object], timeout: float, interval: float = 0.1, what: str = "condition"
) -> None:
    """Polls `predicate` until it returns something true; an exception counts as not yet.

    Raises:
        TimeoutError: It did not hold within `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if predicate():
                return
        time.sleep(interval)
    raise TimeoutError(f"{what} did not hold within {timeout} s")


FAULT_SETTINGS_PREFIX = "PSP_FAULTS__"
"""Settings of `service.testing.faults`: a process given one runs the `psp` command with faults."""


def psp_command(env: Mapping[str, str] | None = None) -> list[str]:
    """The `psp` script of the running interpreter's environment, or, where the package is on
    the path without being installed (a checkout run with `PYTHONPATH`, as on a GPU host whose
    Python brings torch), the same CLI as a module of that interpreter.

    A process whose `env` holds fault settings (`PSP_FAULTS__*`) runs the same command line
    through `service.testing.faulty_psp`, which injects them."""
    if env is not None and any(name.startswith(FAULT_SETTINGS_PREFIX) for name in env):
        return [sys.executable, "-m", "service.testing.faulty_psp"]
    script = shutil.which("psp", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "service.cli.commands"]


@dataclass
class ServerProcess:
    """A child process serving HTTP on loopback; it can be stopped, killed and started again.

    Attributes:
        name: A label for error messages and reports.
        command: The argv to run.
        env: Environment variables added to this process' own.
        port: The port its health endpoint answers on.
        log: Where its stdout and stderr go (appended to, across restarts).
        health_path: The path that answers 200 once it is ready to serve.
    """

    name: str
    command: list[str]
    env: dict[str, str]
    port: int
    log: Path
    health_path: str = "/healthz"
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 120.0) -> None:
        """Starts the process and waits until its health endpoint answers 200.

        Raises:
            RuntimeError: It exited before it was healthy (the message holds its log).
            TimeoutError: It was not healthy within `timeout` seconds (it is stopped).
        """
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.command,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start-up:\n{self.log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base_url + self.health_path, timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"{self.name} was not healthy within {timeout} s; see {self.log}")

    def stop(self, timeout: float = 30.0) -> None:
        """A graceful stop, as an orchestrator would do: SIGTERM, then SIGKILL after `timeout`."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """kill -9: no shutdown handler runs, nothing is flushed."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def psp_serve(name: str, env: dict[str, str], log_dir: Path, *options: str) -> ServerProcess:
    """`psp serve [options]` on a free port with the given `PSP_` settings (not started yet).

    Its log is `log_dir / f"{name}.log"`.
    """
    port = free_port()
    command = [*psp_command(env), "serve", "--port", str(port), "--log-level", "warning", *options]
    return ServerProcess(name, command, env, port, log_dir / f"{name}.log")


def psp_worker(name: str, env: dict[str, str], log_dir: Path, *options: str) -> ServerProcess:
    """`psp worker [options]` (PSP_ROLE=worker) with its metrics endpoint on a free port (not
    started)."""
    port = free_port()
    command = [
        *psp_command(env),
        "worker",
        "--host",
        "127.0.0.1",
        "--log-level",
        "warning",
        *options,
    ]
    env = {
        **env,
        "PSP_ROLE": "worker",
        "PSP_METRICS_PORT": str(port),
        # It listens on loopback only, so that is where API replicas download its checkpoints.
        "PSP_CHECKPOINT__ADVERTISE_URL": f"http://127.0.0.1:{port}",
    }
    return ServerProcess(name, command, env, port, log_dir / f"{name}.log")


@contextlib.contextmanager
def running(*servers: ServerProcess) -> Iterator[tuple[ServerProcess, ...]]:
    """Starts the servers in order and stops them in reverse order, whatever happens."""
    started: list[ServerProcess] = []
    try:
        for server in servers:
            server.start()
            started.append(server)
        yield servers
    finally:
        for server in reversed(started):
            server.stop()


class RedisServer:
    """A private redis-server without persistence, to kill and restart without touching the
    shared one. It keeps its port across restarts, and comes back empty.

    Args:
        directory: Its working directory.
    """

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH; install Redis 7")
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Starts it and waits until it answers PING."""
        self.process = subprocess.Popen(
            [
                self.binary,
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no"),
                *("--dir", str(self.directory)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._answers, 10, 0.05, what=f"redis-server on port {self.port}")

    def _answers(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")

    def kill(self) -> None:
        """kill -9, as an outage would; the data goes with it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
