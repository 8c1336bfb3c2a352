"""Training steps in a child process: the API process predicts from the weights the child
writes, and a divergence, a dead child and a checkpoint restore behave as in one process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from service.app import create_app
from service.contexts.definition import ContextDefinition
from service.model.answers import ModelUnhealthy
from service.model.divergence import Diverged
from service.model.host import ModelHost, TrainRows
from service.model.step_child import start_fork_server
from service.model.step_client import ChildStepHost, StepProcessDied, steps_run_in_child
from service.settings import Settings
from service.testing.faults import FaultSettings, fault_hooks
from service.testing.processes import wait_until
from tests.service.api.helpers import register, sqlite_settings
from tests.service.api.helpers import rows as api_rows

CONTEXTS = [ContextDefinition(0, seed=11, power=None), ContextDefinition(1, seed=12, power=None)]


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    """A small model; no registry is opened, so none is configured."""
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "device": "cpu",
        "model": {"kind": "complex", "input_shape": [16], "hidden": [32]},
        "replay": {"rows": 200, "per_step": 8},
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return _settings(tmp_path)


@pytest.fixture
def child_host(settings: Settings) -> Iterator[ChildStepHost]:
    host = ChildStepHost(settings)
    host.add_contexts(CONTEXTS)
    yield host
    host.close()


def _thread_host(settings: Settings) -> ModelHost:
    host = ModelHost(
        settings.model.to_config(),
        settings.training.to_config(settings.replay),
        torch.device("cpu"),
        replay_rows=settings.replay.rows,
    )
    host.add_contexts(CONTEXTS)
    return host


def _batches(count: int, seed: int = 0) -> list[TrainRows]:
    rng = np.random.default_rng(seed)
    return [
        TrainRows(
            rng.integers(0, 2, 8).astype(np.int64),
            rng.standard_normal((8, 16)).astype(np.float32),
            rng.integers(0, 10, 8).astype(np.int64),
        )
        for _ in range(count)
    ]


def _probabilities(host: ModelHost) -> np.ndarray:
    inputs = np.random.default_rng(9).standard_normal((4, 16)).astype(np.float32)
    probabilities, _ = host.predict(inputs, np.array([0, 1, 0, 1]))
    return probabilities


def test_the_api_process_predicts_from_the_weights_the_child_trained(
    settings: Settings, child_host: ChildStepHost
) -> None:
    in_thread = _thread_host(settings)
    assert np.array_equal(_probabilities(child_host), _probabilities(in_thread))

    child_results = child_host.train_steps(_batches(5))
    thread_results = in_thread.train_steps(_batches(5))

    assert [r.model_version for r in child_results] == [1, 2, 3, 4, 5]
    assert child_host.model_version == 5 == in_thread.model_version
    assert [r.loss for r in child_results] == pytest.approx([r.loss for r in thread_results])
    for mine, theirs in zip(child_results, thread_results, strict=True):
        assert torch.equal(mine.correct, theirs.correct)
    assert np.allclose(_probabilities(child_host), _probabilities(in_thread), atol=1e-6)
    # The buffer lives in the child, and rehearsal drew on it as in one process.
    assert child_host.remembered_contexts() == in_thread.remembered_contexts() == {0, 1}


def test_a_context_added_later_trains_in_the_child(child_host: ChildStepHost) -> None:
    child_host.add_contexts([ContextDefinition(7, seed=99, power=None)])
    batch = TrainRows(
        np.full(4, 7, dtype=np.int64),
        np.ones((4, 16), dtype=np.float32),
        np.zeros(4, dtype=np.int64),
    )
    before = _probabilities(child_host)
    assert child_host.train_step(batch).applied
    assert child_host.has_context(7)
    assert not np.array_equal(_probabilities(child_host), before)


def test_a_new_context_does_not_wait_for_the_steps_in_flight(
    child_host: ChildStepHost,
) -> None:
    training = threading.Thread(target=child_host.train_steps, args=(_batches(1500),))
    training.start()
    time.sleep(0.2)  # the steps are in flight in the child

    child_host.add_contexts([ContextDefinition(8, seed=80, power=None)])

    assert training.is_alive()  # the context was added while the steps went on
    training.join()
    assert child_host.has_context(8) and child_host.model_version == 1500


def test_a_divergence_in_the_child_stops_predictions_here(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    faults = fault_hooks(FaultSettings(nonfinite_steps=1))  # pickled to the child
    host = ChildStepHost(settings, faults.step_watchers)
    try:
        host.add_contexts(CONTEXTS)
        host.watch_divergence(settings.guard)
        with pytest.raises(Diverged, match="the weights became non-finite"):
            host.train_step(_batches(1)[0])
        assert not host.healthy
        with pytest.raises(ModelUnhealthy, match="being restored"):
            _probabilities(host)
    finally:
        host.close()


def test_a_checkpoint_saved_and_restored_through_the_child(
    child_host: ChildStepHost, tmp_path: Path
) -> None:
    child_host.train_steps(_batches(3))
    saved_answer = _probabilities(child_host)
    child_host.save(tmp_path / "three.pt", {"last_entry_id": "3-0"})
    child_host.train_steps(_batches(2, seed=1))
    assert child_host.model_version == 5

    metadata = child_host.load(tmp_path / "three.pt")

    assert metadata["last_entry_id"] == "3-0"
    assert child_host.model_version == 3
    assert np.array_equal(_probabilities(child_host), saved_answer)
    child_host.restore_as(tmp_path / "three.pt", 9)
    assert child_host.model_version == 9


def test_a_dead_child_is_replaced_and_the_restored_checkpoint_is_served(
    child_host: ChildStepHost, tmp_path: Path
) -> None:
    child_host.train_steps(_batches(2))
    child_host.save(tmp_path / "two.pt", {})
    saved_answer = _probabilities(child_host)
    pid = child_host.child_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)

    with pytest.raises(StepProcessDied, match="training child died"):
        child_host.train_steps(_batches(1))
    assert not child_host.healthy  # it might have died half-way through a step

    child_host.load(tmp_path / "two.pt")  # what the trainer's rewind does

    assert child_host.healthy and child_host.model_version == 2
    assert np.array_equal(_probabilities(child_host), saved_answer)
    assert child_host.train_step(_batches(1)[0]).model_version == 3  # knows contexts 0 and 1


def test_a_process_that_never_closed_its_host_still_exits(tmp_path: Path) -> None:
    """multiprocessing joins its children at exit, and the child ignores SIGTERM: the pipe
    must close first, or a failed start-up would hang instead of exiting."""
    program = (
        "from pathlib import Path\n"
        "from service.settings import Settings\n"
        "from service.model.step_client import ChildStepHost\n"
        "from service.contexts.definition import ContextDefinition\n"
        f"host = ChildStepHost(Settings(data_dir=Path({str(tmp_path)!r}), device='cpu'))\n"
        "host.add_contexts([ContextDefinition(0, seed=1, power=None)])\n"
        "print('started', flush=True)\n"
    )
    finished = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout == "started\n"


@pytest.mark.parametrize(
    ("overrides", "in_child"),
    [
        ({}, True),
        ({"training": {"steps_in": "thread"}}, False),
        ({"role": "worker", "redis_url": "redis://127.0.0.1:6379/0"}, False),
        ({"role": "api", "redis_url": "redis://127.0.0.1:6379/0"}, False),
    ],
)
def test_only_role_all_steps_in_a_child_unless_told_otherwise(
    tmp_path: Path, overrides: dict[str, Any], in_child: bool
) -> None:
    assert steps_run_in_child(_settings(tmp_path, **overrides)) is in_child


def _parent_of(pid: int) -> int:
    # /proc/PID/stat: "pid (name) state ppid ..."; the name may hold spaces, never ")".
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def _fork_servers_started_here() -> list[int]:
    servers = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            is_server = b"multiprocessing.forkserver" in (entry / "cmdline").read_bytes()
            if is_server and _parent_of(int(entry.name)) == os.getpid():
                servers.append(int(entry.name))
        except (FileNotFoundError, ProcessLookupError):  # it exited while being read
            continue
    return servers


def test_the_fork_server_started_ahead_forks_the_first_child(settings: Settings) -> None:
    start_fork_server()
    start_fork_server()  # once started, it is not started again
    servers = _fork_servers_started_here()
    assert len(servers) == 1

    host = ChildStepHost(settings)
    try:
        host.add_contexts(CONTEXTS)  # starts the child
        assert host.child_pid is not None
        assert _parent_of(host.child_pid) == servers[0]
    finally:
        host.close()


def test_a_context_added_while_the_child_is_replaced_is_known_to_the_new_child(
    child_host: ChildStepHost,
) -> None:
    child_host.train_steps(_batches(1))
    real_call_on = child_host._call_on
    new = ContextDefinition(2, seed=13, power=None)

    def add_then_lose_the_child(pipe: str, command: str, *args: Any) -> Any:
        answer = real_call_on(pipe, command, *args)
        if command == "add_contexts" and args[0] == [new]:
            # The child dies right after it learned the context, and another thread's call
            # starts its successor before this call has returned.
            pid = child_host.child_pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(StepProcessDied):
                child_host.train_steps(_batches(1))
            child_host.remembered_contexts()  # starts the successor
        return answer

    child_host._call_on = add_then_lose_the_child  # type: ignore[method-assign]
    child_host.add_contexts([new])
    child_host._call_on = real_call_on  # type: ignore[method-assign]
    rows = TrainRows(np.array([2, 2]), np.ones((2, 16), np.float32), np.array([1, 2]))
    assert child_host.train_steps([rows])[0].applied


def test_a_child_that_dies_on_the_contexts_pipe_asks_for_a_restore(
    child_host: ChildStepHost, tmp_path: Path
) -> None:
    child_host.train_steps(_batches(2))
    assert child_host.restore_needed is None
    pid = child_host.child_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    child_host.add_contexts([ContextDefinition(2, seed=13, power=None)])  # finds it dead
    assert not child_host.healthy
    assert "training child" in str(child_host.restore_needed)
    child_host.save(tmp_path / "fresh.pt", {})  # the successor's state, for the load below
    child_host.load(tmp_path / "fresh.pt")
    assert child_host.restore_needed is None and child_host.healthy


def test_the_trainer_restores_a_checkpoint_when_the_child_died_on_a_registration(
    tmp_path: Path,
) -> None:
    settings = sqlite_settings(tmp_path, training={"steps_in": "child_process"})
    with TestClient(create_app(settings)) as client:
        register(client, "a")
        body = {"inputs": api_rows(4), "labels": [1, 2, 3, 4]}
        assert client.post("/train/a?wait=true", json=body).json()["applied"]
        host = client.app.state.runtime.shards[0].host  # type: ignore[attr-defined]
        pid = host.child_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        register(client, "b")  # the registration finds the child dead
        wait_until(
            lambda: client.post("/predict/a", json={"inputs": api_rows(1)}).status_code == 200,
            30,
            what="predictions answered again after the restore",
        )
        assert host.restore_needed is None and host.child_pid not in (None, pid)
        assert client.post("/train/b?wait=true", json=body).json()["applied"]
