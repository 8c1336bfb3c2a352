"""The Redis feedback store turns an unreachable Redis into `FeedbackUnavailable` (a 503)."""

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
            store.release(["a"], rows),
        ):
            with pytest.raises(FeedbackUnavailable, match=r"connecting to 127\.0\.0\.1:1"):
                await call
    finally:
        await store.close()
