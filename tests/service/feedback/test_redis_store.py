"""The Redis feedback store: a look takes nothing and a claim takes once; an unreachable Redis is
`FeedbackUnavailable` (a 503)."""

from __future__ import annotations

import numpy as np
import pytest

from service.feedback.redis_store import RedisFeedbackStore
from service.feedback.store import FeedbackUnavailable, Remembered

UNREACHABLE = "redis://127.0.0.1:1/0"


async def test_every_call_on_an_unreachable_redis_raises_feedback_unavailable() -> None:
    store = RedisFeedbackStore(UNREACHABLE, "psp-test:", ttl_seconds=60)
    rows = [Remembered(np.zeros(3, dtype=np.float32), 1)]
    try:
        for call in (
            store.remember(["a"], rows),
            store.claim(["a"]),
            store.look(["a"]),
        ):
            with pytest.raises(FeedbackUnavailable, match=r"connecting to 127\.0\.0\.1:1"):
                await call
    finally:
        await store.close()


async def test_a_look_takes_nothing_and_a_claim_takes_every_id_once(
    redis_url: str, key_prefix: str
) -> None:
    store = RedisFeedbackStore(redis_url, key_prefix, ttl_seconds=60)
    rows = [Remembered(np.full(3, n, dtype=np.float32), n) for n in (1, 2)]
    ids = ["p0.1.a", "p0.1.b"]
    try:
        await store.remember(ids, rows)
        for _ in range(2):
            looked = await store.look(ids)
            assert [row.predicted for row in looked.rows] == [1, 2]
        claimed = await store.claim(ids)
        assert [row.inputs.tolist() for row in claimed.rows] == [[1.0] * 3, [2.0] * 3]
        assert (await store.look(ids)).used == ids
        assert (await store.claim(ids)).used == ids
        assert (await store.look(["p0.1.c"])).missing == ["p0.1.c"]
    finally:
        await store.close()
