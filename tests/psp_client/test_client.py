"""`Client` and `AsyncClient` against a running `psp serve`."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest

from psp_client import (
    NO_RETRIES,
    AsyncClient,
    Client,
    Conflict,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RetryPolicy,
    TooManyRequests,
)
from service.testing.processes import wait_until
from tests.psp_client.conftest import serving

# The tests here talk to real `psp serve` processes; `make test-fast` leaves them out.
pytestmark = pytest.mark.real_process

WIDTH = 8


def rows(n: int, value: float = 0.5) -> list[list[float]]:
    return [[value] * WIDTH for _ in range(n)]


def fresh_key() -> str:
    return f"c-{uuid.uuid4().hex[:12]}"


def examples_seen_settles_at(client: Client, key: str, expected: int) -> None:
    """Waits for the next checkpoints to count the learned rows, then checks the count stays."""
    wait_until(lambda: client.get_context(key).examples_seen >= expected, 10, what="progress")
    time.sleep(0.5)
    assert client.get_context(key).examples_seen == expected


def test_contexts_round_trip(server: str) -> None:
    key = fresh_key()
    with Client(server) as client:
        created = client.create_context(key, seed=123456789)
        assert created.key == key and created.seed == 123456789 and created.examples_seen == 0
        assert client.get_context(key).index == created.index
        listed = client.list_contexts(prefix=key)
        assert [c.key for c in listed.items] == [key] and listed.total == 1
        client.delete_context(key)
        with pytest.raises(NotFound) as caught:
            client.get_context(key)
    assert caught.value.status_code == 404 and key in caught.value.detail


def test_train_then_predict_gives_typed_results(server: str) -> None:
    key = fresh_key()
    with Client(server) as client:
        client.create_context(key)
        before = client.model_info().model_version
        result = client.train(key, rows(4), [0, 1, 2, 1], wait=True)
        assert result.accepted == 4 and result.applied is True
        assert result.model_version is not None and result.model_version > before
        assert len(result.idempotency_key) == 32
        prediction = client.predict(key, rows(3))
        assert len(prediction.predictions) == 3
        assert all(0 <= p < 3 for p in prediction.predictions)
        assert all(abs(sum(row) - 1.0) < 1e-5 for row in prediction.probabilities)
        assert prediction.prediction_ids is None
        examples_seen_settles_at(client, key, 4)
        recent = client.get_context(key).recent
        assert recent is not None and recent.window_hours == 24 and recent.train_seen == 4
        assert recent.feedback_seen == 0 and recent.feedback_accuracy is None
        (hour,) = client.context_history(key, hours=1)
        assert (hour.train_seen, hour.feedback_seen) == (4, 0)
        assert hour.hour.tzinfo is not None and hour.hour.minute == 0


def test_each_error_status_raises_its_own_type(server: str) -> None:
    key = fresh_key()
    with Client(server) as client:
        client.create_context(key, seed=42_000_001)
        with pytest.raises(Conflict) as conflict:
            client.create_context(key, seed=42_000_002)
        assert conflict.value.status_code == 409
        with pytest.raises(InvalidRequest) as invalid:
            client.train(key, rows(2), [0])
        assert "one label per row" in invalid.value.detail
        with pytest.raises(PayloadTooLarge) as too_large:
            client.predict(key, rows(4097))
        assert too_large.value.status_code == 413
        with pytest.raises(NotFound):
            client.predict(fresh_key(), rows(1))


def test_429_is_retried_after_retry_after_then_raised(tiny_queue_server: str) -> None:
    key = fresh_key()
    sent: list[httpx.Request] = []
    policy = RetryPolicy(attempts=3, base_delay=0.01)
    with Client(tiny_queue_server, retry=policy) as client:
        client.create_context(key)
        client._http.event_hooks["request"].append(sent.append)
        started = time.monotonic()
        with pytest.raises(TooManyRequests) as caught:
            client.train(key, rows(5), [0] * 5)
        elapsed = time.monotonic() - started
    assert caught.value.retry_after == 1.0
    assert len(sent) == 3
    # Two waits of the server's Retry-After (1 s), not the 0.01 s backoff.
    assert elapsed >= 2.0
    # Every try carried the same Idempotency-Key.
    assert len({r.headers["idempotency-key"] for r in sent}) == 1


def test_no_retries_raises_at_the_first_429(tiny_queue_server: str) -> None:
    key = fresh_key()
    with Client(tiny_queue_server, retry=NO_RETRIES) as client:
        client.create_context(key)
        started = time.monotonic()
        with pytest.raises(TooManyRequests):
            client.train(key, rows(5), [0] * 5)
        assert time.monotonic() - started < 1.0


class LoseFirstAnswer(httpx.BaseTransport):
    """Delivers each request to the server but loses the first answer, as a dropped connection
    after the server has acted would."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.requests = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        response = self.inner.handle_request(request)
        response.read()
        if self.requests == 1:
            raise httpx.ReadError("connection lost", request=request)
        return response


def test_a_retried_train_call_trains_once(server: str) -> None:
    key = fresh_key()
    with Client(server) as admin:
        admin.create_context(key)
    transport = LoseFirstAnswer()
    policy = RetryPolicy(attempts=3, base_delay=0.01)
    with Client(server, retry=policy, transport=transport) as client:
        result = client.train(key, rows(6), [1] * 6, wait=True)
    assert transport.requests == 2
    assert result.accepted == 6
    with Client(server) as admin:
        examples_seen_settles_at(admin, key, 6)


def test_the_same_idempotency_key_resumes_without_training_twice(server: str) -> None:
    key = fresh_key()
    with Client(server) as client:
        client.create_context(key)
        first = client.train(key, rows(3), [2, 2, 2], idempotency_key="batch-0001")
        again = client.train(key, rows(3), [2, 2, 2], idempotency_key="batch-0001", wait=True)
        assert again.batch_id == first.batch_id
        examples_seen_settles_at(client, key, 3)


def test_retry_after_wins_over_backoff_and_is_capped() -> None:
    policy = RetryPolicy(base_delay=0.1, max_delay=5.0)
    asked = httpx.Response(503, headers={"Retry-After": "3"})
    too_long = httpx.Response(429, headers={"Retry-After": "120"})
    silent = httpx.Response(503)
    assert policy.delay(1, asked) == 3.0
    assert policy.delay(1, too_long) == 5.0
    assert 0.05 <= policy.delay(1, silent) <= 0.1
    assert 0.2 <= policy.delay(3, silent) <= 0.4
    assert policy.should_retry(1, silent) and not policy.should_retry(5, silent)
    assert not policy.should_retry(1, httpx.Response(404))


async def test_async_client_trains_and_predicts(server: str) -> None:
    key = fresh_key()
    async with AsyncClient(server) as client:
        await client.create_context(key)
        result = await client.train(key, rows(2), [0, 1], wait=True)
        assert result.applied is True
        prediction = await client.predict(key, rows(2))
        assert len(prediction.probabilities) == 2 and len(prediction.probabilities[0]) == 3
        with pytest.raises(NotFound):
            await client.get_context(fresh_key())
        assert (await client.get_context(key)).key == key


def test_feedback_round_trip_through_the_client(server: str) -> None:
    key = fresh_key()
    with Client(server) as client:
        client.create_context(key)
        prediction = client.predict(key, rows(2), remember=True)
        assert prediction.prediction_ids is not None and len(prediction.prediction_ids) == 2
        labels = [prediction.predictions[0], (prediction.predictions[1] + 1) % 3]
        result = client.feedback(key, prediction.prediction_ids, labels, wait=True)
        assert result.accepted == 2 and result.correct == 1 and result.applied is True
        with pytest.raises(Conflict):
            client.feedback(key, prediction.prediction_ids, labels)
        with pytest.raises(NotFound):
            client.feedback(key, [prediction.prediction_ids[0][:-16] + "0" * 16], [0])


def test_contexts_and_models_name_their_shard(tmp_path: Path) -> None:
    with serving(tmp_path, PSP_SHARDS__COUNT="2") as url, Client(url) as client:
        first, second = client.create_context("s-a"), client.create_context("s-b")
        assert {first.shard, second.shard} == {0, 1}  # the second joins the emptier shard
        assert client.get_context("s-b").shard == second.shard
        client.train("s-b", [[0.5] * 8], [1], wait=True)
        trained = client.model_info(second.shard)
        untouched = client.model_info(first.shard)
        assert (trained.shard, trained.shards, trained.contexts) == (second.shard, 2, 1)
        assert (untouched.shard, untouched.model_version) == (first.shard, 0)
        assert trained.model_version == 1
