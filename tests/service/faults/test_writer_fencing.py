"""One writer per shard, for real: a second `psp worker` for a shard is turned away, and a
writer that stalled past its lease is fenced out once another took over."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from service.testing.processes import psp_worker
from tests.service.faults.conftest import ProcessFactory

# Every test here starts real `psp` processes; `make test-fast` leaves them out.
pytestmark = pytest.mark.real_process


def _second_worker(
    env: dict[str, str], tmp_path: Path, name: str
) -> tuple[list[str], dict[str, str]]:
    """The command and environment of another worker for shard 0, with its own data folder."""
    process = psp_worker(name, {**env, "PSP_DATA_DIR": str(tmp_path / name)}, tmp_path)
    return process.command, {**os.environ, **process.env}


def test_a_second_writer_for_a_shard_exits_with_one_line(
    base_env: dict[str, str], spawn: ProcessFactory, tmp_path: Path
) -> None:
    spawn("worker", base_env)
    command, env = _second_worker({**base_env, "PSP_WRITER__WAIT_SECONDS": "1"}, tmp_path, "second")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("psp: shard 0 already has a writer: ")
    assert "renews it while it runs; stop that process" in last


def test_a_writer_that_stalled_past_its_lease_is_fenced_and_exits(
    base_env: dict[str, str], spawn: ProcessFactory, tmp_path: Path
) -> None:
    env = {**base_env, "PSP_WRITER__LEASE_SECONDS": "2"}
    first = spawn("worker", env)
    checkpoints = Path(env["PSP_DATA_DIR"]) / "checkpoints"
    written = sorted(path.name for path in checkpoints.rglob("*"))
    os.kill(first.pid, signal.SIGSTOP)  # a long pause: garbage collection, a frozen VM
    try:
        # The successor waits for the frozen writer's lease to lapse, then claims the shard.
        successor_env = {
            **env,
            "PSP_DATA_DIR": str(tmp_path / "successor"),
            "PSP_WRITER__WAIT_SECONDS": "60",
        }
        successor = psp_worker("successor", successor_env, tmp_path)
        successor.start()  # healthy: it claimed the shard
    finally:
        os.kill(first.pid, signal.SIGCONT)
    try:
        assert first.process is not None
        assert first.process.wait(30) == 2
        log = first.log.read_text()
        assert "psp: shard 0: this writer was replaced and stops writing" in log
        assert sorted(path.name for path in checkpoints.rglob("*")) == written
        assert successor.process is not None and successor.process.poll() is None
    finally:
        successor.stop()
