"""Two shards, each with its own worker, behind two API processes, with no shared volume: the
API processes download every checkpoint from its worker. kill -9 one shard's worker: the other
shard keeps training and serving, the dead shard's contexts keep answering from its last
checkpoint, and after the restart every accepted example of both shards is applied once."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter

import httpx
import pytest
import redis

from service.checkpoints.announce import ModelAnnouncement
from service.queue.keys import ShardKeys
from service.testing.processes import wait_until
from tests.service.faults.traffic import (
    Accepted,
    examples_seen,
    expected_counts,
    stream_batches,
)

# Every test here starts real `psp` processes; `make test-fast` leaves them out.
pytestmark = pytest.mark.real_process

ROW = [0.3] * 64
KEYS = ["t-0", "t-1", "t-2", "t-3"]
TOKEN = "checkpoint-token-for-tests"


def _version(base: str, shard: int) -> int:
    model = httpx.get(f"{base}/model", params={"shard": shard}, timeout=5).json()
    version: int = model["model_version"]
    return version


def _train_and_wait(base: str, key: str, label: int, applied_rows: Counter[str]) -> int:
    """Trains 4 rows and waits for them; counts them in `applied_rows`."""
    applied = httpx.post(
        f"{base}/train/{key}?wait=true",
        json={"inputs": [ROW] * 4, "labels": [label] * 4},
        timeout=30,
    )
    assert applied.status_code == 200, applied.text
    applied_rows[key] += 4
    version: int = applied.json()["model_version"]
    return version


class Predictor(threading.Thread):
    """Asks every API process for a prediction of `key` in turn until stopped; keeps each
    answer's status and model version."""

    def __init__(self, bases: list[str], key: str) -> None:
        super().__init__(daemon=True)
        self.bases, self.key = bases, key
        self.answers: list[tuple[int, int | None]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        turn = 0
        while not self.halt.is_set():
            base = self.bases[turn % len(self.bases)]
            turn += 1
            try:
                answer = httpx.post(f"{base}/predict/{self.key}", json={"inputs": [ROW]}, timeout=5)
                version = answer.json().get("model_version") if answer.status_code == 200 else None
                self.answers.append((answer.status_code, version))
            except httpx.HTTPError:
                self.answers.append((0, None))
            time.sleep(0.05)


def test_a_killed_shard_worker_stops_nothing_else_and_loses_nothing(
    base_env, spawn, tmp_path, redis_url, key_prefix
) -> None:
    env = {
        **base_env,
        "PSP_SHARDS__COUNT": "2",
        "PSP_CHECKPOINT__EVERY_STEPS": "4",
        "PSP_CHECKPOINT__EVERY_SECONDS": "0.3",
        "PSP_CHECKPOINT__FETCH_TOKEN": TOKEN,
    }

    def own_volume(name: str) -> dict[str, str]:
        return {**env, "PSP_DATA_DIR": str(tmp_path / name)}

    workers = [spawn("worker", own_volume(f"worker-{k}"), "--shard", str(k)) for k in (0, 1)]
    apis = [spawn("serve", {**own_volume(f"api-{n}"), "PSP_ROLE": "api"}) for n in (0, 1)]
    bases = [f"http://127.0.0.1:{api.port}" for api in apis]
    shard_of = {}
    for key in KEYS:
        registered = httpx.post(f"{bases[0]}/contexts", json={"key": key}, timeout=10)
        assert registered.status_code == 201, registered.text
        shard_of[key] = registered.json()["shard"]
    assert sorted(shard_of.values()) == [0, 0, 1, 1]  # least loaded first: spread evenly
    on_shard_0 = [key for key in KEYS if shard_of[key] == 0]
    on_shard_1 = [key for key in KEYS if shard_of[key] == 1]

    # Both API processes serve each shard's checkpoints, downloaded from its worker.
    posted: Counter[str] = Counter()  # rows posted outside the stream below
    assert _train_and_wait(bases[0], on_shard_0[0], 1, posted) == 1
    assert _train_and_wait(bases[1], on_shard_1[0], 2, posted) == 1
    for base in bases:
        for shard in (0, 1):
            wait_until(
                lambda b=base, s=shard: _version(b, s) == 1, 30, what=f"{base} shard {shard}"
            )
    for name in ("api-0", "api-1"):
        assert list((tmp_path / name / "checkpoints" / "shard-1").glob("ckpt-*.safetensors"))

    # The announced checksum is the one of the bytes the worker serves, and only with the token.
    announced = ModelAnnouncement.decode(
        redis.Redis.from_url(redis_url).get(ShardKeys(key_prefix, 1).model_latest)
    )
    assert announced is not None and announced.url is not None
    assert announced.url.startswith(f"http://127.0.0.1:{workers[1].port}/shards/1/checkpoints/")
    assert httpx.get(announced.url, timeout=10).status_code == 401
    served = httpx.get(announced.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert served.status_code == 200
    assert hashlib.sha256(served.content).hexdigest() == announced.sha256
    assert served.headers["X-Checkpoint-SHA256"] == announced.sha256
    other_shard = announced.url.replace("/shards/1/", "/shards/0/")
    assert httpx.get(other_shard, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404

    predictor = Predictor(bases, on_shard_1[1])
    predictor.start()
    accepted: list[Accepted] = []
    stream = threading.Thread(
        target=stream_batches,
        args=(bases, KEYS, 60, 17, accepted),
        kwargs={"retry_seconds": 60},
    )
    stream.start()
    wait_until(lambda: len(accepted) >= 5, 30, what="the stream under way")
    last_version_of_1 = _version(bases[0], 1)
    workers[1].kill()
    killed_at = len(predictor.answers)

    # Shard 0 keeps training, and both API processes serve what it learns.
    before = _version(bases[0], 0)
    after = _train_and_wait(bases[1], on_shard_0[1], 3, posted)
    assert after > before
    for base in bases:
        wait_until(lambda b=base: _version(b, 0) >= after, 30, what=f"{base} following shard 0")
    # Shard 1's batches are still accepted (into its stream) while its writer is down.
    while_down = httpx.post(
        f"{bases[0]}/train/{on_shard_1[0]}",
        json={"inputs": [ROW] * 3, "labels": [4] * 3},
        timeout=10,
    )
    assert while_down.status_code == 202
    posted[on_shard_1[0]] += 3
    wait_until(
        lambda: len(predictor.answers) - killed_at >= 10, 30, what="answers while shard 1 is down"
    )
    down_answers = predictor.answers[killed_at:]
    assert len(down_answers) >= 10
    # From the last checkpoint, not from fresh weights.
    assert {status for status, _ in down_answers} == {200}
    assert min(version or 0 for _, version in down_answers) >= last_version_of_1 >= 1

    workers[1].start()
    stream.join(120)
    assert not stream.is_alive() and len(accepted) == 60
    streamed = expected_counts(accepted, KEYS)
    assert all(streamed[key] for key in on_shard_1), "shard 1 got batches"
    expected = {key: streamed[key] + posted[key] for key in KEYS}
    wait_until(lambda: examples_seen(bases[1]) == expected, 90, 0.5, what="all examples counted")
    time.sleep(1.0)
    assert examples_seen(bases[0]) == expected
    predictor.halt.set()
    predictor.join(10)
    assert {status for status, _ in predictor.answers} == {200}
    for base in bases:
        wait_until(
            lambda b=base: _version(b, 1) > last_version_of_1,
            30,
            what=f"{base} serving shard 1 after the restart",
        )
