"""Both feedback stores: each context keeps its own share of remembered predictions."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest

from service.feedback.ids import new_ids
from service.feedback.redis_store import RedisFeedbackStore
from service.feedback.store import FeedbackStore, MemoryFeedbackStore, Remembered

SHARE = 10


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[FeedbackStore]:
    made: FeedbackStore
    if request.param == "memory":
        made = MemoryFeedbackStore(60, max_rows=100, max_rows_per_context=SHARE)
    else:
        url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("key_prefix")
        made = RedisFeedbackStore(url, prefix, 60, max_rows_per_context=SHARE)
    yield made
    await made.close()


def _rows(n: int) -> list[Remembered]:
    return [Remembered(np.full(4, i, dtype=np.float32), i % 3) for i in range(n)]


async def test_a_loud_context_pushes_out_its_own_oldest_rows_only(store: FeedbackStore) -> None:
    quiet = new_ids(2, 1_000, 5)
    await store.remember(quiet, _rows(5))
    loud = [new_ids(1, 2_000 + i, 1)[0] for i in range(100)]
    for chunk in range(0, 100, 25):
        await store.remember(loud[chunk : chunk + 25], _rows(25))

    claimed = await store.claim(quiet)
    assert [row.predicted for row in claimed.rows] == [0, 1, 2, 0, 1]
    newest = await store.claim(loud[-SHARE:])
    assert len(newest.rows) == SHARE and not newest.missing
    oldest = await store.claim(loud[:3])
    assert oldest.missing == loud[:3]
    assert await store.pushed_out(loud[:3] + quiet) == loud[:3]


async def test_used_rows_leave_the_share(store: FeedbackStore) -> None:
    first = new_ids(3, 1_000, SHARE)
    await store.remember(first, _rows(SHARE))
    assert len((await store.claim(first)).rows) == SHARE
    more = new_ids(3, 2_000, SHARE)
    await store.remember(more, _rows(SHARE))
    assert len((await store.claim(more)).rows) == SHARE
