"""Delayed labels over HTTP: one tenant's predictions never push out another's."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.queue.base import Enqueued, QueueUnavailable, TrainEntry
from service.queue.lanes import ShardQueue
from tests.service.api.helpers import register, rows, sqlite_settings


def _remember(client: TestClient, key: str, count: int) -> list[str]:
    answer = client.post(f"/predict/{key}?remember=true", json={"inputs": rows(count)})
    assert answer.status_code == 200, answer.text
    ids: list[str] = answer.json()["prediction_ids"]
    return ids


def test_a_loud_tenant_pushes_out_only_its_own_remembered_predictions(tmp_path: Path) -> None:
    settings = sqlite_settings(tmp_path, feedback={"max_rows": 100})  # 10 per context
    with TestClient(create_app(settings)) as client:
        register(client, "a")
        register(client, "b")
        quiet = _remember(client, "b", 5)
        loud = [i for _ in range(4) for i in _remember(client, "a", 25)]
        kept = client.post("/feedback/b", json={"prediction_ids": quiet, "labels": [1] * 5})
        assert kept.status_code == 202, kept.text
        pushed = client.post("/feedback/a", json={"prediction_ids": loud[:1], "labels": [1]})
        assert pushed.status_code == 410
        newest = client.post("/feedback/a", json={"prediction_ids": loud[-10:], "labels": [1] * 10})
        assert newest.status_code == 202


class _LostAnswer:
    """A queue whose next put queues the entry, then fails as a lost answer would."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue
        self.lose_next = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.queue, name)

    async def enqueue(self, entry: TrainEntry, idempotency_key: str | None = None) -> Enqueued:
        queued = await self.queue.enqueue(entry, idempotency_key)
        if self.lose_next:
            self.lose_next = False
            raise QueueUnavailable("the connection dropped before the answer came")
        return queued


def test_labels_sent_again_after_a_lost_answer_are_queued_once(tmp_path: Path) -> None:
    with TestClient(create_app(sqlite_settings(tmp_path))) as client:
        register(client, "a")
        ids = _remember(client, "a", 3)
        shard = client.app.state.runtime.shards[0]  # type: ignore[attr-defined]
        lost = _LostAnswer(shard.queue)
        client.app.state.runtime.feedback.lanes[0] = ShardQueue(lost, shard.applied)  # type: ignore[attr-defined]
        body = {"prediction_ids": ids, "labels": [1, 2, 3]}
        assert client.post("/feedback/a", json=body).status_code == 503
        again = client.post("/feedback/a", json=body)
        assert again.status_code == 202, again.text
        pending = client.portal.call(shard.queue.stats).pending_examples  # type: ignore[union-attr]
        assert pending == 3  # queued once, though asked twice


class _DiesMidCall:
    """A queue whose next put stops dead, before or after queueing the entry, as a process
    killed there would: no handler of the call runs until the test lets it end."""

    def __init__(self, queue: Any, *, after_queueing: bool) -> None:
        self.queue = queue
        self.after_queueing = after_queueing
        self.stuck = threading.Event()
        self.end = threading.Event()
        self.armed = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.queue, name)

    async def enqueue(self, entry: TrainEntry, idempotency_key: str | None = None) -> Enqueued:
        if not self.armed:
            return await self.queue.enqueue(entry, idempotency_key)
        self.armed = False
        if self.after_queueing:
            await self.queue.enqueue(entry, idempotency_key)
        self.stuck.set()
        while not self.end.is_set():
            await asyncio.sleep(0.01)
        raise QueueUnavailable("the test ends the stopped call")


@pytest.mark.parametrize("after_queueing", [False, True], ids=["before", "after"])
def test_labels_of_a_call_that_died_mid_way_are_queued_once_when_sent_again(
    tmp_path: Path, after_queueing: bool
) -> None:
    with TestClient(create_app(sqlite_settings(tmp_path))) as client:
        register(client, "a")
        ids = _remember(client, "a", 3)
        shard = client.app.state.runtime.shards[0]  # type: ignore[attr-defined]
        dying = _DiesMidCall(shard.queue, after_queueing=after_queueing)
        client.app.state.runtime.feedback.lanes[0] = ShardQueue(dying, shard.applied)  # type: ignore[attr-defined]
        body = {"prediction_ids": ids, "labels": [1, 2, 3]}
        first = threading.Thread(target=client.post, args=("/feedback/a",), kwargs={"json": body})
        first.start()
        assert dying.stuck.wait(30)
        try:
            again = client.post("/feedback/a", json=body)  # the client's retry
            assert again.status_code == 202, again.text
            stats = client.portal.call(shard.queue.stats)  # type: ignore[union-attr]
            assert stats.pending_examples == 3  # queued once, though asked twice
            used = client.post("/feedback/a", json=body)
            assert used.status_code == 409, used.text
        finally:
            dying.end.set()
            first.join(30)
