"""The API side of checkpoint announcements: what a follower does when it cannot serve one."""

from __future__ import annotations

import logging

import httpx
import numpy as np
import pytest
import torch

from psp_core.learner import TrainingConfig
from psp_core.models import ModelConfig
from service.checkpoints.announce import ModelAnnouncement
from service.checkpoints.store import CheckpointStore
from service.checkpoints.transfer import CheckpointFetcher
from service.contexts.definition import ContextDefinition
from service.model.host import ModelHost, ModelUnhealthy
from service.queue.keys import ShardKeys
from service.serving.model_follower import ModelFollower


async def test_an_unreachable_checkpoint_is_retried_and_reported_once(
    tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    host = ModelHost(ModelConfig(kind="binary", hidden=(8,)), TrainingConfig(), torch.device("cpu"))
    store = CheckpointStore(tmp_path, keep=2)
    requests: list[httpx.Request] = []

    def worker_down(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(503, text="worker restarting")

    fetcher = CheckpointFetcher(store, 0, None, transport=httpx.MockTransport(worker_down))
    follower = ModelFollower("redis://127.0.0.1:1/0", ShardKeys(), host, store, fetcher)
    file = "ckpt-0000000007-v7.safetensors"
    announced = ModelAnnouncement(
        7, 7, file, 0.0, f"http://worker/shards/0/checkpoints/{file}", "0"
    )
    caplog.set_level(logging.DEBUG, logger="service.serving.model_follower")
    for _ in range(3):
        await follower.serve(announced)
    await follower.close()

    assert len(requests) == 3  # tried at every poll
    assert (follower.sequence, host.model_version) == (0, 0)  # still serving what it had
    reports = [r for r in caplog.records if "retrying every poll" in r.getMessage()]
    assert [r.levelno for r in reports] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    assert "answered 503 worker restarting" in reports[0].getMessage()


def _host() -> ModelHost:
    return ModelHost(ModelConfig(kind="binary", hidden=(8,)), TrainingConfig(), torch.device("cpu"))


def _predict(host: ModelHost) -> tuple[np.ndarray, int]:
    host.add_contexts([ContextDefinition(index=0, seed=1, power=None)])
    return host.predict(np.zeros((1, 64), np.float32), np.array([0]))


def _following_a_worker_that_is_down(tmp_path) -> tuple[ModelHost, ModelFollower]:
    host, store = _host(), CheckpointStore(tmp_path, keep=2)

    def worker_down(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, text="worker restarting")

    fetcher = CheckpointFetcher(store, 0, None, transport=httpx.MockTransport(worker_down))
    return host, ModelFollower("redis://127.0.0.1:1/0", ShardKeys(), host, store, fetcher)


def _write_checkpoint(path, version: int) -> None:
    """A checkpoint of model `version`, as the worker would leave on a shared volume."""
    trained = _host()
    trained.learner.model_version = version
    trained.save(path, {})


async def test_a_replica_with_none_of_its_shards_weights_refuses_to_predict_until_one_loads(
    tmp_path,
) -> None:
    host, follower = _following_a_worker_that_is_down(tmp_path)
    file = "ckpt-0000000003-v42.safetensors"
    announced = ModelAnnouncement(3, 42, file, 0.0, f"http://worker/shards/0/checkpoints/{file}")

    await follower.serve(announced)
    assert host.weights_missing is not None
    assert "model version 42 is announced" in host.weights_missing
    assert "worker" in host.weights_missing and file not in host.weights_missing
    with pytest.raises(ModelUnhealthy, match="has not loaded its shard's weights yet"):
        _predict(host)

    _write_checkpoint(tmp_path / file, 42)  # the worker's volume becomes readable
    await follower.serve(announced)
    await follower.close()
    assert (host.weights_missing, follower.sequence) == (None, 3)
    probabilities, version = _predict(host)
    assert version == 42 and probabilities.shape == (1, 10)


async def test_a_replica_that_serves_a_checkpoint_keeps_answering_when_a_newer_one_fails(
    tmp_path,
) -> None:
    host, follower = _following_a_worker_that_is_down(tmp_path)
    served = ModelAnnouncement(1, 5, "ckpt-0000000001-v5.safetensors", 0.0)
    _write_checkpoint(tmp_path / served.file, 5)
    await follower.serve(served)
    newer = "ckpt-0000000002-v9.safetensors"
    await follower.serve(ModelAnnouncement(2, 9, newer, 0.0, f"http://worker/{newer}"))
    await follower.close()

    assert host.weights_missing is None and follower.sequence == 1
    assert _predict(host)[1] == 5
