"""The once-a-minute line that names the contexts whose rows were bounded or refused."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from service.training.noisy_contexts import NoisyContexts


async def _keys() -> list[tuple[str, int]]:
    return [("quiet", 1), ("loud", 2)]


async def test_the_noisiest_contexts_are_named_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    noisy = NoisyContexts(3, _keys, every_seconds=0)
    noisy.count(np.array([2, 2, 1, 7]), np.array([True, True, False, True]), refused=False)
    noisy.count(np.array([2]), np.zeros(1, dtype=bool), refused=True)
    with caplog.at_level(logging.WARNING, logger="service.training.noisy_contexts"):
        await noisy.report_if_due()
        await noisy.report_if_due()  # nothing new since: no second line
    [line] = caplog.messages
    assert "shard 3" in line and "bounded 3 rows and 1 rows were refused" in line
    assert line.index("'loud' (2 bounded, 1 refused)") < line.index("'index 7' (1 bounded")
    assert "quiet" not in line


async def test_nothing_is_said_before_the_interval_has_passed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    noisy = NoisyContexts(0, _keys, every_seconds=60)
    noisy.count(np.array([2]), np.array([True]), refused=False)
    with caplog.at_level(logging.WARNING, logger="service.training.noisy_contexts"):
        await noisy.report_if_due()
    assert caplog.messages == []
