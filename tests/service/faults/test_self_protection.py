"""Self-protection on real processes (Redis, PostgreSQL): each fault is recovered from without
restarting the process. Faults in the training step are injected through `PSP_FAULTS__*`."""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from service.checkpoints.announce import ModelAnnouncement
from service.checkpoints.reserved_versions import RESERVE_BLOCK
from service.queue.base import TrainEntry
from service.queue.keys import ShardKeys
from service.queue.redis_link import RedisLink
from service.queue.redis_stream import RedisStreamQueue
from service.testing.processes import wait_until
from tests.service.faults.proxy import TcpProxy

# Every test here starts real `psp` processes; `make test-fast` leaves them out.
pytestmark = pytest.mark.real_process

ROW = [0.25] * 64


SHARD_0 = '{shard="0"}'


def _first_step_after(rewinds: int) -> int:
    """The version of the first step after `rewinds` rewinds of a process in role `all`: each
    names the restored state from the reserved versions up (docs/design.md), one block higher
    each time, so a version never names two states."""
    return rewinds * RESERVE_BLOCK + 1


def _metric(base: str, name: str, labels: str = "") -> float:
    pattern = re.compile(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", re.MULTILINE)
    found = pattern.search(httpx.get(f"{base}/metrics", timeout=10).text)
    return float(found[1]) if found else 0.0


def _register(base: str, key: str = "t") -> None:
    assert httpx.post(f"{base}/contexts", json={"key": key}, timeout=10).status_code == 201


def _train(base: str, label: int = 1, rows: int = 1, wait: bool = False) -> httpx.Response:
    return httpx.post(
        f"{base}/train/t{'?wait=true' if wait else ''}",
        json={"inputs": [ROW] * rows, "labels": [label] * rows},
        timeout=60,
    )


def _dead_letters(base: str) -> dict:
    response = httpx.get(f"{base}/model/dead-letters", timeout=10)
    assert response.status_code == 200, response.text
    page: dict = response.json()
    return page


def _examples_seen(base: str) -> int:
    seen: int = httpx.get(f"{base}/contexts/t", timeout=10).json()["examples_seen"]
    return seen


def _predict_ok(base: str) -> list[float]:
    answer = httpx.post(f"{base}/predict/t", json={"inputs": [ROW]}, timeout=10)
    assert answer.status_code == 200, answer.text
    probabilities: list[float] = answer.json()["probabilities"][0]
    assert all(math.isfinite(p) for p in probabilities)
    return probabilities


def test_an_injected_non_finite_step_is_rolled_back_and_its_entry_set_aside(
    base_env, spawn
) -> None:
    server = spawn("serve", {**base_env, "PSP_FAULTS__NONFINITE_STEPS": "1"})
    base = f"http://127.0.0.1:{server.port}"
    _register(base)
    assert _train(base, rows=2).status_code == 202  # its step leaves NaN in the weights

    wait_until(lambda: _dead_letters(base)["total"] == 1, 30, what="the entry set aside")
    letter = _dead_letters(base)["items"][0]
    assert letter["examples"] == 2 and letter["context_index"] is not None
    assert "the weights became non-finite" in letter["reason"]
    assert _metric(base, "psp_trainer_divergences_total", SHARD_0) == 1
    assert _metric(base, "psp_dead_lettered_examples_total", SHARD_0) == 2
    _predict_ok(base)

    applied = _train(base, rows=3, wait=True)  # the first step after one rewind
    assert applied.status_code == 200 and applied.json()["model_version"] == _first_step_after(1)
    assert httpx.get(f"{base}/readyz", timeout=10).status_code == 200
    # Exactly-once accounting: 3 learned, 2 rejected, none lost.
    wait_until(lambda: _examples_seen(base) == 3, 30, what="the learned examples counted")
    assert "training diverged (the weights became non-finite)" in server.log.read_text()


def test_an_exception_in_the_training_step_restarts_the_trainer_and_poison_moves_aside(
    base_env, spawn
) -> None:
    # Three failing steps: the entry fails three times (the default poison_attempts) alone.
    server = spawn("serve", {**base_env, "PSP_FAULTS__FAILING_STEPS": "3"})
    base = f"http://127.0.0.1:{server.port}"
    _register(base)
    assert _train(base).status_code == 202

    def trainer_named_down() -> bool:
        ready = httpx.get(f"{base}/readyz", timeout=10)
        return ready.status_code == 503 and "background task trainer" in ready.json()["detail"]

    wait_until(trainer_named_down, 20, 0.02, what="/readyz naming the trainer")
    wait_until(lambda: _dead_letters(base)["total"] == 1, 30, what="the entry set aside")
    reason = _dead_letters(base)["items"][0]["reason"]
    assert "failed 3 times" in reason and "InjectedFault" in reason
    assert _metric(base, "psp_background_restarts_total", '{task="trainer"}') == 3

    applied = _train(base, rows=2, wait=True)  # the first step after three rewinds
    assert applied.status_code == 200 and applied.json()["model_version"] == _first_step_after(3)
    wait_until(lambda: httpx.get(f"{base}/readyz", timeout=10).status_code == 200, 20)
    log = server.log.read_text()
    assert "background task trainer crashed" in log and "Traceback" in log


def test_an_entry_that_fails_once_is_learned_after_the_restart(base_env, spawn) -> None:
    server = spawn("serve", {**base_env, "PSP_FAULTS__FAILING_STEPS": "1"})
    base = f"http://127.0.0.1:{server.port}"
    _register(base)
    applied = _train(base, rows=2, wait=True)  # learned by the first step after one rewind
    assert applied.status_code == 200 and applied.json()["model_version"] == _first_step_after(1)
    assert _dead_letters(base)["total"] == 0
    assert _metric(base, "psp_background_restarts_total", '{task="trainer"}') == 1
    wait_until(lambda: _examples_seen(base) == 2, 30, what="the examples counted")


def test_an_undecodable_entry_in_the_stream_is_dead_lettered_and_the_queue_moves_on(
    base_env, spawn, redis_url, key_prefix
) -> None:
    server = spawn("serve", base_env)
    base = f"http://127.0.0.1:{server.port}"
    _register(base)
    assert _train(base, wait=True).status_code == 200
    keys = ShardKeys(key_prefix, 0)
    client = redis.Redis.from_url(redis_url)
    with client.pipeline(transaction=True) as put:  # as a producer's put does, atomically
        put.xadd(keys.stream, {"e": b"\xc1 not msgpack", "n": 3})
        put.incrby(keys.pending_examples, 3)
        put.execute()

    applied = _train(base, rows=2, wait=True)
    assert applied.status_code == 200 and applied.json()["model_version"] == 2
    page = _dead_letters(base)
    assert page["total"] == 1
    letter = page["items"][0]
    assert "cannot be decoded" in letter["reason"]
    assert letter["examples"] == 3 and letter["context_index"] is None
    assert client.xlen(keys.dead_letters) == 1
    # The rejected examples left the backpressure counter; nothing is lost or pending.
    wait_until(lambda: int(client.get(keys.pending_examples) or 0) == 0, 30)
    wait_until(lambda: _examples_seen(base) == 3, 30, what="the learned examples counted")
    client.close()


def test_a_huge_learning_rate_never_serves_a_non_finite_answer_and_learning_resumes(
    base_env, spawn
) -> None:
    env = {
        **base_env,
        "PSP_FAULTS__HUGE_LR_STEPS": "3",
        "PSP_TRAINING__COALESCE": "false",
        # SGD learns the one label within the 15 steps that follow the fault.
        "PSP_TRAINING__OPTIMIZER": "sgd",
        "PSP_TRAINING__LR": "0.05",
    }
    server = spawn("serve", env)
    base = f"http://127.0.0.1:{server.port}"
    _register(base)
    answers: list[httpx.Response] = []
    done = threading.Event()

    def keep_predicting() -> None:
        while not done.is_set():
            answers.append(httpx.post(f"{base}/predict/t", json={"inputs": [ROW]}, timeout=10))

    predicting = threading.Thread(target=keep_predicting)
    predicting.start()
    try:
        for _ in range(3):
            assert _train(base, label=1).status_code == 202
        wait_until(lambda: _metric(base, "psp_trainer_divergences_total", SHARD_0) >= 1, 30)
        versions = [_train(base, label=1, rows=4, wait=True) for _ in range(15)]
    finally:
        done.set()
        predicting.join(30)

    assert all(v.status_code == 200 for v in versions)
    assert versions[-1].json()["model_version"] > versions[0].json()["model_version"]
    assert len(answers) > 10
    for answer in answers:
        if answer.status_code == 503:  # between a divergence and the restore
            assert "being restored" in answer.json()["detail"]
            continue
        assert answer.status_code == 200, answer.text
        assert all(math.isfinite(p) for p in answer.json()["probabilities"][0])
    assert sum(a.status_code == 200 for a in answers) > len(answers) // 2
    assert _dead_letters(base)["total"] >= 1
    assert int(np.argmax(_predict_ok(base))) == 1  # it learned the label after the fault


def test_the_follower_serves_the_newest_checkpoint_when_the_announced_one_was_pruned(
    base_env, spawn, redis_url, key_prefix
) -> None:
    redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    proxy = TcpProxy(redis_port)
    proxy.open()
    env = {
        **base_env,
        "PSP_CHECKPOINT__EVERY_STEPS": "1",
        "PSP_CHECKPOINT__KEEP": "2",
        "PSP_TRAINING__COALESCE": "false",  # one step, one version, one checkpoint per entry
    }
    proxied = redis_url.replace(f":{redis_port}/", f":{proxy.port}/")
    api = spawn("serve", {**env, "PSP_ROLE": "api", "PSP_REDIS_URL": proxied})
    worker = spawn("worker", {**env, "PSP_ROLE": "worker"})
    base = f"http://127.0.0.1:{api.port}"
    _register(base)
    index = httpx.get(f"{base}/contexts/t", timeout=10).json()["index"]
    assert _train(base, wait=True).json()["model_version"] == 1
    wait_until(lambda: httpx.get(f"{base}/model", timeout=5).json()["model_version"] == 1, 20)

    proxy.cut()  # the API hears nothing while the worker moves on and prunes
    client = redis.Redis.from_url(redis_url)
    keys = ShardKeys(key_prefix, 0)
    worker_metrics = f"http://127.0.0.1:{worker.port}"

    async def put_entry() -> None:
        queue = RedisStreamQueue(
            RedisLink(redis_url), key_prefix=key_prefix, max_pending_examples=1000
        )
        entry = TrainEntry(index, np.full((1, 64), 0.25, np.float32), np.array([1]), time.time())
        await queue.enqueue(entry)
        await queue.close()

    for version in range(2, 6):  # one checkpoint per version; only the last two are kept
        asyncio.run(put_entry())
        wait_until(lambda v=version: _metric(worker_metrics, "psp_model_version", SHARD_0) == v, 30)
        time.sleep(0.3)
    checkpoints = Path(env["PSP_DATA_DIR"]) / "checkpoints"
    wait_until(lambda: len(list(checkpoints.iterdir())) == 2, 30)
    newest = ModelAnnouncement.decode(client.get(keys.model_latest))
    assert newest is not None
    # Announce, as the newest, a checkpoint that the worker has already pruned.
    sequence = newest.sequence - 2
    pruned = ModelAnnouncement(sequence, 3, f"ckpt-{sequence:010d}-v3.safetensors", time.time())
    assert not (checkpoints / pruned.file).exists()
    client.set(keys.model_latest, pruned.encode())

    proxy.open()
    wait_until(
        lambda: httpx.get(f"{base}/model", timeout=5).json()["model_version"] == 5,
        30,
        what="the API serving the newest checkpoint",
    )
    assert "is not on the volume and its announcement names no URL" in api.log.read_text()
    assert "serving the newest" in api.log.read_text()
    client.set(keys.model_latest, newest.encode())
    # It keeps following the worker afterwards, once its own Redis connections are back.
    wait_until(lambda: httpx.get(f"{base}/readyz", timeout=10).status_code == 200, 30)
    assert _train(base).status_code == 202
    wait_until(lambda: httpx.get(f"{base}/model", timeout=5).json()["model_version"] == 6, 20)
    _predict_ok(base)
    client.close()
    proxy.cut()
