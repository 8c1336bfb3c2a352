"""Several shards' training steps in one child process: each step touches its own shard's
weights, the steps of different shards take turns, and a dead child is found dead by every
shard and replaced by one successor."""

from __future__ import annotations

import itertools
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from service.contexts.definition import ContextDefinition
from service.model.host import TrainRows
from service.model.step_client import ChildStepHost, StepProcessDied
from service.model.step_process import StepProcess
from service.settings import Settings
from service.testing.step_times import StepTimes

# Each shard's contexts: the registry gives each context index to one shard only.
SHARD_CONTEXTS = [
    [ContextDefinition(0, seed=11, power=None), ContextDefinition(3, seed=14, power=None)],
    [ContextDefinition(1, seed=12, power=None)],
    [ContextDefinition(2, seed=13, power=None)],
]


def _settings(tmp_path: Path) -> Settings:
    """A small model; no registry is opened, so none is configured."""
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "device": "cpu",
        "model": {"kind": "complex", "input_shape": [16], "hidden": [32]},
        "replay": {"rows": 200, "per_step": 8},
    }
    return Settings(**values)


def _hosts(
    tmp_path: Path, steps: StepProcess, count: int, step_watchers: Any = ()
) -> list[ChildStepHost]:
    """The hosts of shards 0 to `count - 1` on `steps`, each given its own contexts (the
    first of them starts the child)."""
    settings = _settings(tmp_path)
    built = [
        ChildStepHost(settings.for_shard(shard), step_watchers, steps) for shard in range(count)
    ]
    for host, contexts in zip(built, SHARD_CONTEXTS[:count], strict=True):
        host.add_contexts(contexts)
    return built


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[list[ChildStepHost]]:
    """Three shards' hosts on one step process."""
    built = _hosts(tmp_path, StepProcess(), 3)
    yield built
    for host in built:
        host.close()


def _batches(host_number: int, count: int, seed: int = 0) -> list[TrainRows]:
    """Batches of the contexts of shard `host_number`."""
    indices = [d.index for d in SHARD_CONTEXTS[host_number]]
    rng = np.random.default_rng(seed)
    return [
        TrainRows(
            rng.choice(indices, 8).astype(np.int64),
            rng.standard_normal((8, 16)).astype(np.float32),
            rng.integers(0, 10, 8).astype(np.int64),
        )
        for _ in range(count)
    ]


def _weights(host: ChildStepHost) -> list[torch.Tensor]:
    return [parameter.detach().clone() for parameter in host.learner.model.parameters()]


def _same(first: list[torch.Tensor], second: list[torch.Tensor]) -> bool:
    return all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_the_shards_share_one_child(hosts: list[ChildStepHost]) -> None:
    pids = {host.child_pid for host in hosts}
    assert len(pids) == 1 and None not in pids
    pid = pids.pop()
    assert pid != os.getpid()


def test_each_shards_steps_change_only_its_own_weights(hosts: list[ChildStepHost]) -> None:
    for trained, host in enumerate(hosts):
        before = [_weights(other) for other in hosts]
        results = host.train_steps(_batches(trained, 3, seed=trained))
        assert [result.model_version for result in results] == [1, 2, 3]
        after = [_weights(other) for other in hosts]
        for number in range(len(hosts)):
            assert _same(before[number], after[number]) is (number != trained)
    assert [host.model_version for host in hosts] == [3, 3, 3]
    # Each shard's replay buffer holds its own contexts only.
    assert [host.remembered_contexts() for host in hosts] == [{0, 3}, {1}, {2}]


def test_a_context_added_to_one_shard_is_unknown_to_the_others(
    hosts: list[ChildStepHost],
) -> None:
    assert [host.child_bank_rows() for host in hosts] == [2, 1, 1]
    hosts[1].add_contexts([ContextDefinition(4, seed=15, power=None)])
    assert [host.child_bank_rows() for host in hosts] == [2, 2, 1]
    assert [host.has_context(4) for host in hosts] == [False, True, False]


def test_a_dead_child_is_found_by_every_shard_and_replaced_by_one(
    hosts: list[ChildStepHost],
) -> None:
    for number, host in enumerate(hosts):
        host.train_steps(_batches(number, 1))
    pid = hosts[0].child_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)

    for number, host in enumerate(hosts):
        with pytest.raises(StepProcessDied, match=f"shard {number}: the training child died"):
            host.train_steps(_batches(number, 1))
        assert not host.healthy
        assert f"the training child {pid} died" in str(host.restore_needed)

    for number, host in enumerate(hosts):  # each gives the successor its own contexts
        assert host.train_steps(_batches(number, 1))[0].applied
    pids = {host.child_pid for host in hosts}
    assert len(pids) == 1 and pids.isdisjoint({None, pid})
    assert [host.child_bank_rows() for host in hosts] == [2, 1, 1]


def test_two_shards_racing_to_restart_start_one_child(hosts: list[ChildStepHost]) -> None:
    pid = hosts[0].child_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    for number, host in enumerate(hosts):
        with pytest.raises(StepProcessDied):
            host.train_steps(_batches(number, 1))
    barrier = threading.Barrier(len(hosts))
    errors: list[BaseException] = []

    def restart(number: int) -> None:
        barrier.wait()
        try:
            hosts[number].train_steps(_batches(number, 1))
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=restart, args=(n,)) for n in range(len(hosts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    pids = {host.child_pid for host in hosts}
    assert len(pids) == 1 and pids.isdisjoint({None, pid})


def test_the_child_stops_when_the_last_shard_leaves(tmp_path: Path) -> None:
    steps = StepProcess()
    hosts = _hosts(tmp_path, steps, 2)
    pid = steps.pid
    assert pid is not None and hosts[1].child_pid == pid

    hosts[0].close()
    assert hosts[1].train_steps(_batches(1, 1))[0].applied  # the other shard still steps
    assert steps.pid == pid
    hosts[1].close()

    assert steps.pid is None
    assert not Path(f"/proc/{pid}").exists()  # joined, so not even a zombie is left


def test_a_shard_cannot_join_a_running_child(tmp_path: Path) -> None:
    steps = StepProcess()
    (first,) = _hosts(tmp_path, steps, 1)  # starts the child
    try:
        with pytest.raises(RuntimeError, match="cannot join the running step process"):
            ChildStepHost(_settings(tmp_path).for_shard(1), (), steps)
    finally:
        first.close()


def test_the_steps_of_different_shards_never_overlap(tmp_path: Path) -> None:
    times = StepTimes(tmp_path / "steps.txt")  # pickled to the child, which notes each step
    hosts = _hosts(tmp_path, StepProcess(), 2, (times,))
    try:
        # Many one-step commands from each shard at once, so that they interleave.
        threads = [
            threading.Thread(
                target=lambda h=host, n=number: [h.train_step(b) for b in _batches(n, 40)]
            )
            for number, host in enumerate(hosts)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        steps = times.intervals()  # each answer came after its step was noted
        assert len(steps) == 80
        for (_, first_end), (second_start, _) in itertools.pairwise(steps):
            assert first_end <= second_start
        assert [host.model_version for host in hosts] == [40, 40]
    finally:
        for host in hosts:
            host.close()
