"""The campaign's private PostgreSQL and Redis servers, to crash and restart without touching the
shared ones, which other tests use.

PostgreSQL's binaries come from `PSP_TEST_POSTGRES_BINDIR`, else the newest under
/usr/lib/postgresql. PostgreSQL refuses to run as root: under root its server runs as the
`postgres` user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from service.testing.processes import RedisServer, free_port, wait_until


def postgres_binaries() -> Path:
    """The directory of `initdb` and `pg_ctl`.

    Raises:
        RuntimeError: None is found; the message says what to install or set.
    """
    configured = os.environ.get("PSP_TEST_POSTGRES_BINDIR")
    candidates = [Path(configured)] if configured else []
    installed = Path("/usr/lib/postgresql")
    if installed.is_dir():
        versions = sorted(
            (p for p in installed.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
        )
        candidates += [version / "bin" for version in reversed(versions)]
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).parent)
    for candidate in candidates:
        if (candidate / "pg_ctl").exists() and (candidate / "initdb").exists():
            return candidate
    raise RuntimeError(
        "no PostgreSQL server binaries (initdb, pg_ctl) found under /usr/lib/postgresql or on "
        "PATH; install PostgreSQL 15 or set PSP_TEST_POSTGRES_BINDIR to their directory"
    )


class PrivatePostgres:
    """A PostgreSQL cluster of its own in a temporary folder, on a free port, trust auth, to
    crash and restart without touching the shared server.

    `fsync` is off: the faults kill processes, never the machine, and what a killed server
    wrote is in the kernel's page cache, so a crash loses no commit while the disk is spared.
    """

    def __init__(self) -> None:
        self.binaries = postgres_binaries()
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="psp-campaign-postgres-"))
        self.data = self.directory / "data"
        self.log = self.directory / "server.log"
        self._as_owner: list[str] = []
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError(
                    "PostgreSQL does not run as root, and there is no `postgres` user to run "
                    "it as; create one or run the campaign as another user"
                ) from None
            os.chown(self.directory, owner.pw_uid, owner.pw_gid)
            self._as_owner = ["runuser", "-u", "postgres", "--"]
        self._run(
            "initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
            "--no-sync",
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *arguments: str) -> None:
        command = [*self._as_owner, str(self.binaries / program), *arguments]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr.strip()}")

    def start(self) -> None:
        """Starts the server and waits until it accepts connections."""
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
                  "-t", "60", "start")  # fmt: skip

    def crash(self) -> None:
        """An immediate shutdown: every backend quits at once, and the next start recovers
        from the write-ahead log, as after a crash."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def close(self) -> None:
        """Stops the server, if it runs, and removes its folder."""
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.directory, ignore_errors=True)


class DurableRedis(RedisServer):
    """A private redis-server that keeps its data across a kill -9, as the compose stack runs
    Redis: every write is appended to a file and fsynced before Redis answers."""

    def start(self) -> None:
        binary = self.binary
        self.process = subprocess.Popen(
            [
                binary,
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "yes", "--appendfsync", "always"),
                *("--maxmemory-policy", "noeviction", "--dir", str(self.directory)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Loading the append-only file may take a moment: Redis answers LOADING until then.
        wait_until(self._answers, 30, 0.05, what=f"redis-server on port {self.port}")
