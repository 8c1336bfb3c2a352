"""Where remembered predictions wait for their labels: the store interface and its in-memory
form (bounded by a row cap, oldest pushed out first)."""

from __future__ import annotations

import abc
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


class FeedbackUnavailable(ConnectionError):
    """The feedback store (Redis) is unreachable (503)."""


@dataclass(frozen=True)
class Remembered:
    """One predicted row: its inputs (float32) and the class the model predicted."""

    inputs: np.ndarray
    predicted: int


@dataclass(frozen=True)
class Claim:
    """The outcome of claiming ids: the rows, or which ids could not be claimed and why.

    Attributes:
        rows: One row per id, in order, when every id was claimed; empty otherwise.
        missing: Ids that are unknown or expired (nothing was claimed).
        used: Ids whose label was already given (nothing was claimed).
    """

    rows: list[Remembered]
    missing: list[str]
    used: list[str]


class FeedbackStore(abc.ABC):
    """Remembered rows under prediction ids, each claimable exactly once.

    A store that cannot reach its backing service raises `FeedbackUnavailable`.
    """

    @abc.abstractmethod
    async def remember(self, ids: Sequence[str], rows: Sequence[Remembered]) -> None:
        """Keeps `rows` under `ids` for the time to live."""

    @abc.abstractmethod
    async def claim(self, ids: Sequence[str]) -> Claim:
        """Takes the rows of all `ids` at once, or none of them.

        A claimed id stays marked as used until its time to live ends.
        """

    @abc.abstractmethod
    async def release(self, ids: Sequence[str], rows: Sequence[Remembered]) -> None:
        """Undoes a claim whose rows could not be queued, so the labels can be sent again."""

    @abc.abstractmethod
    async def pushed_out_before_ms(self) -> int:
        """Ids created at or before this time (ms) may have been pushed out by the row cap."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Releases connections."""


_USED = None


class MemoryFeedbackStore(FeedbackStore):
    """An in-process store of at most `max_rows` rows; the oldest go first when it is full."""

    def __init__(self, ttl_seconds: float, max_rows: int) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_rows = max_rows
        # id -> (expiry, row or None once used); insertion order is creation order.
        self._rows: OrderedDict[str, tuple[float, Remembered | None]] = OrderedDict()
        self._pushed_out_ms = -1

    def _expire(self) -> None:
        now = time.time()
        while self._rows:
            oldest = next(iter(self._rows))
            if self._rows[oldest][0] > now:
                break
            del self._rows[oldest]

    async def remember(self, ids: Sequence[str], rows: Sequence[Remembered]) -> None:
        self._expire()
        expiry = time.time() + self.ttl_seconds
        for prediction_id, row in zip(ids, rows, strict=True):
            self._rows[prediction_id] = (expiry, row)
        while len(self._rows) > self.max_rows:
            _, (oldest_expiry, _row) = self._rows.popitem(last=False)
            created_ms = int((oldest_expiry - self.ttl_seconds) * 1000)
            self._pushed_out_ms = max(self._pushed_out_ms, created_ms)

    async def claim(self, ids: Sequence[str]) -> Claim:
        self._expire()
        missing = [i for i in ids if i not in self._rows]
        used = [i for i in ids if i in self._rows and self._rows[i][1] is _USED]
        if missing or used:
            return Claim([], missing, used)
        rows = []
        for prediction_id in ids:
            expiry, row = self._rows[prediction_id]
            assert row is not None
            rows.append(row)
            self._rows[prediction_id] = (expiry, _USED)
        return Claim(rows, [], [])

    async def release(self, ids: Sequence[str], rows: Sequence[Remembered]) -> None:
        for prediction_id, row in zip(ids, rows, strict=True):
            if prediction_id in self._rows:
                self._rows[prediction_id] = (self._rows[prediction_id][0], row)

    async def pushed_out_before_ms(self) -> int:
        return self._pushed_out_ms

    async def close(self) -> None:
        self._rows.clear()
