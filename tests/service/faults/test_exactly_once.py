"""kill -9 the writer at random points: every 202-accepted example is applied exactly once."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time

import httpx
import numpy as np
import pytest
import torch

from psp_core.checkpoint import read_weights
from psp_core.contexts import ContextSpec
from psp_core.learner import OnlineLearner, TrainingConfig
from psp_core.models import ModelConfig, build_model
from psp_core.replay import DEFAULT_REPLAY_ROWS, ReplayBuffer
from service.checkpoints.store import CheckpointStore
from service.testing.campaign.topology import step_children
from service.testing.processes import ServerProcess, wait_until
from tests.service.faults.conftest import ProcessFactory
from tests.service.faults.traffic import (
    Accepted,
    examples_seen,
    expected_counts,
    stream_batches,
)

# Every test here starts real `psp` processes; `make test-fast` leaves them out.
pytestmark = pytest.mark.real_process

KEYS = ["tenant-a", "tenant-b", "tenant-c"]


def _kill_three_times(process, stream: threading.Thread, seed: int) -> list[float]:
    rng = random.Random(seed)
    moments = []
    for _ in range(3):
        time.sleep(rng.uniform(0.3, 1.5))
        moments.append(time.monotonic())
        process.kill()
        process.start()
    stream.join(120)
    return moments


class _StepChildOf:
    """The step child of a role-`all` server, killed as `_kill_three_times` kills a process;
    the server starts its successor by itself."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.killed: list[list[int]] = []

    def kill(self) -> None:
        """Kills the step children started since the last kill (one, if they share one);
        a child killed before may linger as a zombie until the server finds it dead."""
        before = {child for children in self.killed for child in children}

        def new_children() -> list[int]:
            return [child for child in step_children(self.server.pid) if child not in before]

        wait_until(new_children, 30, what="a new step child")
        children = new_children()
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        self.killed.append(children)

    def start(self) -> None:
        """Nothing to do: the next call of any shard starts a new child."""


def _stream_while_killed_three_times(
    server, base: str, stream_seed: int, kill_seed: int
) -> dict[str, int]:
    """Streams 60 batches, retried through the restarts, while `server` is killed with
    SIGKILL and restarted three times; returns the examples accepted for each key."""
    accepted: list[Accepted] = []
    stream = threading.Thread(
        target=stream_batches,
        args=([base], KEYS, 60, stream_seed, accepted),
        kwargs={"retry_seconds": 60},
    )
    stream.start()
    _kill_three_times(server, stream, seed=kill_seed)
    assert not stream.is_alive() and len(accepted) == 60
    return expected_counts(accepted, KEYS)


def _assert_counted_exactly_once(base: str, expected: dict[str, int]) -> None:
    """The registry reaches the expected counts, and stays there: nothing is counted twice
    later either."""
    wait_until(lambda: examples_seen(base) == expected, 90, 0.5, what="all examples counted")
    time.sleep(1.0)
    assert examples_seen(base) == expected


def _register(base: str) -> dict[str, tuple[int, int]]:
    """Registers `KEYS`; returns each key's (seed, registry index)."""
    contexts = {}
    for key in KEYS:
        response = httpx.post(f"{base}/contexts", json={"key": key}, timeout=10)
        assert response.status_code == 201
        contexts[key] = (response.json()["seed"], response.json()["index"])
    return contexts


def test_split_roles_apply_every_accepted_example_once_and_replay_exactly(
    base_env, spawn, tmp_path
) -> None:
    env = {
        **base_env,
        "PSP_TRAINING__COALESCE": "false",
        "PSP_TRAINING__DETERMINISTIC": "true",
        "PSP_CHECKPOINT__EVERY_STEPS": "3",
        "PSP_CHECKPOINT__EVERY_SECONDS": "0.3",
        "PSP_CHECKPOINT__KEEP": "50",
    }
    api = spawn("serve", {**env, "PSP_ROLE": "api"})
    worker = spawn("worker", {**env, "PSP_ROLE": "worker"})
    base = f"http://127.0.0.1:{api.port}"
    contexts = _register(base)

    accepted: list[Accepted] = []
    stream = threading.Thread(target=stream_batches, args=([base], KEYS, 90, 7, accepted))
    stream.start()
    _kill_three_times(worker, stream, seed=11)
    assert not stream.is_alive() and len(accepted) == 90

    expected = expected_counts(accepted, KEYS)
    _assert_counted_exactly_once(base, expected)

    # Replaying the accepted entries in id order without interruption gives the same weights,
    # with the service's default rehearsal: its buffer (and its random state) survived the kills.
    config = ModelConfig(kind="binary", input_shape=(64,), hidden=(32,))
    model = build_model(config)
    banked = model.bank.extend([ContextSpec(seed=contexts[k][0]) for k in KEYS])
    rows = dict(zip(KEYS, banked, strict=True))
    row_of_index = {contexts[k][1]: rows[k] for k in KEYS}
    learner = OnlineLearner(
        model,
        TrainingConfig(),
        replay=ReplayBuffer(DEFAULT_REPLAY_ROWS, 64, seed=config.seed),
        rows_of=lambda ids: torch.tensor([row_of_index[int(i)] for i in ids]),
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for entry in sorted(accepted, key=lambda a: tuple(map(int, a.batch_id.split("-")))):
            x = torch.tensor(entry.inputs, dtype=torch.float32)
            y = torch.tensor(entry.labels)
            for start in range(0, len(y), 32):
                chunk = slice(start, start + 32)
                count = len(y[chunk])
                learner.step(
                    x[chunk],
                    torch.full((count,), rows[entry.key]),
                    y[chunk],
                    context_ids=np.full(count, contexts[entry.key][1], dtype=np.int64),
                )
    finally:
        torch.set_num_threads(threads)
    latest = CheckpointStore(tmp_path / "data" / "checkpoints", keep=50).latest()
    assert latest is not None
    serving = read_weights(latest.path, config)
    weights = serving.weights
    assert serving.header["model_version"] == learner.model_version
    assert learner.replay is not None and len(learner.replay) == sum(expected.values())
    for name, tensor in learner.model.state_dict().items():
        assert torch.equal(weights[name], tensor), name


def test_all_role_survives_three_kill_9s_with_exactly_once_counts(base_env, spawn) -> None:
    env = {**base_env, "PSP_CHECKPOINT__EVERY_STEPS": "4", "PSP_CHECKPOINT__EVERY_SECONDS": "0.3"}
    server = spawn("serve", {**env, "PSP_ROLE": "all"})
    base = f"http://127.0.0.1:{server.port}"
    _register(base)
    expected = _stream_while_killed_three_times(server, base, stream_seed=3, kill_seed=5)
    _assert_counted_exactly_once(base, expected)


def _three_shards_in_one_process(
    base_env: dict[str, str], spawn: ProcessFactory
) -> tuple[ServerProcess, str]:
    """A role-`all` server of three shards that checkpoint often, with `KEYS` registered."""
    env = {
        **base_env,
        "PSP_SHARDS__COUNT": "3",
        "PSP_CHECKPOINT__EVERY_STEPS": "4",
        "PSP_CHECKPOINT__EVERY_SECONDS": "0.3",
    }
    server = spawn("serve", {**env, "PSP_ROLE": "all"})
    base = f"http://127.0.0.1:{server.port}"
    _register(base)
    return server, base


def test_three_shards_in_one_process_survive_kill_9s_with_exactly_once_counts(
    base_env, spawn
) -> None:
    server, base = _three_shards_in_one_process(base_env, spawn)
    shards = {key: httpx.get(f"{base}/contexts/{key}", timeout=5).json()["shard"] for key in KEYS}
    assert shards == {"tenant-a": 0, "tenant-b": 1, "tenant-c": 2}
    expected = _stream_while_killed_three_times(server, base, stream_seed=11, kill_seed=13)
    assert all(expected.values()), "every shard got batches"
    _assert_counted_exactly_once(base, expected)
    for shard in range(3):
        model = httpx.get(f"{base}/model", params={"shard": shard}, timeout=5).json()
        assert model["shard"] == shard and model["contexts"] == 1 and model["model_version"] > 0


def test_three_shards_survive_kill_9s_of_their_one_step_child_with_exactly_once_counts(
    base_env: dict[str, str], spawn: ProcessFactory
) -> None:
    server, base = _three_shards_in_one_process(base_env, spawn)
    step_child = _StepChildOf(server)
    expected = _stream_while_killed_three_times(step_child, base, stream_seed=17, kill_seed=19)
    assert all(expected.values()), "every shard got batches"
    # One child at a time served the three shards, and each kill met a new one.
    assert [len(children) for children in step_child.killed] == [1, 1, 1]
    assert len({children[0] for children in step_child.killed}) == 3
    _assert_counted_exactly_once(base, expected)
    inputs = {"inputs": [[0.5] * 64]}

    def every_shard_predicts() -> bool:
        answers = [httpx.post(f"{base}/predict/{key}", json=inputs, timeout=5) for key in KEYS]
        return all(answer.status_code == 200 for answer in answers)

    wait_until(every_shard_predicts, 60, 0.5, what="every shard restored or untouched")
