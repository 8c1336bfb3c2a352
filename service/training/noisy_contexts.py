"""Naming the tenants whose rows the trainer had to bound or refuse, at most once a minute.

Context keys never become metric labels (thousands of series), so the per-shard counters
(`psp_trainer_bounded_rows_total`, `psp_trainer_refused_rows_total`) say that something is
wrong and this log line says who: the contexts with the most such rows since the last line.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import numpy as np

log = logging.getLogger(__name__)

REPORT_EVERY_SECONDS = 60.0
NAMED_PER_REPORT = 5


class NoisyContexts:
    """Tallies bounded and refused rows per context and logs the worst, once a minute.

    Args:
        shard: The shard, named in the line.
        live_keys: Reads the registry's (key, index) pairs, to name the contexts.
        every_seconds: The shortest time between two lines.
    """

    def __init__(
        self,
        shard: int,
        live_keys: Callable[[], Awaitable[list[tuple[str, int]]]],
        every_seconds: float = REPORT_EVERY_SECONDS,
    ) -> None:
        self.shard = shard
        self.live_keys = live_keys
        self.every_seconds = every_seconds
        self.bounded: Counter[int] = Counter()
        self.refused: Counter[int] = Counter()
        self._last_report = time.monotonic()

    def count(self, indices: np.ndarray, bounded: np.ndarray, *, refused: bool) -> None:
        """Tallies a step's rows: every row of a refused step, and the bounded ones of any."""
        if refused:
            self.refused.update(indices.tolist())
        if len(bounded):
            self.bounded.update(indices[bounded].tolist())

    async def report_if_due(self) -> None:
        """Logs one line naming the noisiest contexts, if there are any and a minute passed."""
        if not (self.bounded or self.refused):
            return
        now = time.monotonic()
        if now - self._last_report < self.every_seconds:
            return
        self._last_report = now
        bounded, refused = self.bounded, self.refused
        self.bounded, self.refused = Counter(), Counter()
        noisiest = (bounded + refused).most_common(NAMED_PER_REPORT)
        try:
            keys = {index: key for key, index in await self.live_keys()}
        except Exception as err:  # naming is a courtesy: the counts are in the metrics
            log.warning("cannot name the noisy contexts of shard %d: %s", self.shard, err)
            keys = {}
        named = ", ".join(
            f"{keys.get(index, f'index {index}')!r} ({bounded[index]} bounded, "
            f"{refused[index]} refused)"
            for index, _ in noisiest
        )
        log.warning(
            "shard %d: in the last %.0f s the input scaling bounded %d rows and %d rows were "
            "refused; the most came from %s",
            self.shard,
            self.every_seconds,
            sum(bounded.values()),
            sum(refused.values()),
            named,
        )
