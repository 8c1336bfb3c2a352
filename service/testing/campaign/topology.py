"""The campaign's processes and how to find them.

- `split`: one `psp serve` with `PSP_ROLE=api` and one `psp worker` for shard 0, sharing a data
  folder as the compose stack's containers share a volume.
- `all`: one `psp serve` with `PSP_ROLE=all`, whose training steps run in a child process (the
  only role that has one).

Both run on the private PostgreSQL and Redis of `service.testing.campaign.stores`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from service.testing.campaign.clients import INPUT_WIDTH, KEY_PREFIX
from service.testing.campaign.stores import DurableRedis, PrivatePostgres
from service.testing.processes import ServerProcess, psp_serve, psp_worker

Topology = Literal["split", "all"]


class CampaignProcesses:
    """The stores and the `psp` processes of one campaign, in `directory`.

    Attributes:
        logs: Every process's log.
        disk_full_flag: While this file exists, checkpoint writes fail
            (`PSP_FAULTS__DISK_FULL_WHILE`).
        api: The process that answers HTTP (`psp serve`), once `running`.
        worker: The `psp worker` of shard 0 (topology `split`), else None.
    """

    def __init__(self, topology: Topology, directory: Path, log: Callable[[str], None]) -> None:
        self.topology = topology
        self.directory = directory
        self.log = log
        self.logs = directory / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.disk_full_flag = directory / "disk-full"
        self.postgres = PrivatePostgres()
        self.redis = DurableRedis(directory)
        self.api: ServerProcess
        self.worker: ServerProcess | None = None

    @property
    def base_url(self) -> str:
        return self.api.base_url

    @property
    def checkpoints(self) -> Path:
        """Where the writer of shard 0 keeps its checkpoints."""
        return self.directory / "data" / "checkpoints"

    def env(self) -> dict[str, str]:
        """The settings every `psp` process of the campaign runs with."""
        return {
            "PSP_DATA_DIR": str(self.directory / "data"),
            "PSP_DATABASE_URL": self.postgres.url,
            "PSP_REDIS_URL": self.redis.url,
            "PSP_KEY_PREFIX": KEY_PREFIX,
            "PSP_DEVICE": "cpu",
            "PSP_MODEL__KIND": "binary",
            "PSP_MODEL__HIDDEN": "[32]",
            "PSP_MODEL__INPUT_SHAPE": f"[{INPUT_WIDTH}]",
            "PSP_REGISTRY_POLL_SECONDS": "1",
            "PSP_CHECKPOINT__EVERY_STEPS": "20",
            "PSP_CHECKPOINT__EVERY_SECONDS": "1",
            # Rollbacks reach back minutes, past deletes that the writer's look back at recent
            # deletes (a minute) no longer sees; a small buffer keeps the files small.
            "PSP_CHECKPOINT__KEEP": "150",
            "PSP_REPLAY__ROWS": "2000",
            "PSP_LIMITS__WAIT_SECONDS": "10",
            "PSP_FAULTS__DISK_FULL_WHILE": str(self.disk_full_flag),
            "OMP_NUM_THREADS": "1",
        }

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Starts the stores and the processes, and kills them all on leaving."""
        try:
            self.postgres.start()
            self.redis.start()
            env = self.env()
            if self.topology == "split":
                self.api = psp_serve("api", {**env, "PSP_ROLE": "api"}, self.logs)
                self.worker = psp_worker("worker", env, self.logs)
                start_together(self.api, self.worker)
            else:
                self.api = psp_serve("server", {**env, "PSP_ROLE": "all"}, self.logs)
                self.api.start()
            yield
        finally:
            for server in (self.worker, getattr(self, "api", None)):
                if server is not None:
                    server.kill()
            self.redis.kill()
            self.postgres.close()

    def restart(self, server: ServerProcess, timeout: float = 120.0) -> bool:
        """Starts a killed process again; False when it would not start (a store it needs may
        be down: it is started again once the store is back)."""
        try:
            server.start(timeout)
            return True
        except (RuntimeError, TimeoutError) as error:
            self.log(f"  {server.name} did not start: {str(error).splitlines()[0]}")
            server.kill()
            return False


def descendants(pid: int) -> dict[int, int]:
    """Every process below `pid`, mapped to its parent, read from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            # The command name may hold spaces and parentheses: the fields follow the last ")".
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            parents[int(entry.name)] = int(fields[1])
    below: dict[int, int] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, its_parent in parents.items():
            if its_parent == parent and child not in below:
                below[child] = parent
                frontier.append(child)
    return below


def step_children(server_pid: int) -> list[int]:
    """The training step children of a `psp serve` with `PSP_ROLE=all`: they fork from its
    multiprocessing fork server, so they are that server's children."""
    found = []
    for child, parent in descendants(server_pid).items():
        with contextlib.suppress(OSError):
            command = Path(f"/proc/{parent}/cmdline").read_bytes()
            if parent != server_pid and b"multiprocessing.forkserver" in command:
                found.append(child)
    return found


def start_together(*servers: ServerProcess) -> None:
    """Starts the servers at once (each imports torch: seconds) and waits until all are
    healthy.

    Raises:
        RuntimeError, TimeoutError: One did not start (the first such error).
    """
    errors: list[BaseException] = []

    def start(server: ServerProcess) -> None:
        try:
            server.start()
        except (RuntimeError, TimeoutError) as error:
            errors.append(error)

    threads = [threading.Thread(target=start, args=(server,)) for server in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
