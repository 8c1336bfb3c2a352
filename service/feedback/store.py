"""Where remembered predictions wait for their labels: the store interface and its in-memory
form (bounded by a row cap and a share per context, oldest pushed out first)."""

from __future__ import annotations

import abc
import time
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.feedback.ids import parse_id


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
    async def look(self, ids: Sequence[str]) -> Claim:
        """The rows of all `ids`, or which cannot be claimed and why; takes nothing."""

    @abc.abstractmethod
    async def claim(self, ids: Sequence[str]) -> Claim:
        """Takes the rows of all `ids` at once, or none of them.

        A claimed id stays marked as used until its time to live ends.
        """

    @abc.abstractmethod
    async def pushed_out(self, ids: Sequence[str]) -> list[str]:
        """Those of `ids` that a row cap may have pushed out (their context's or the store's),
        as opposed to ids never issued."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Releases connections."""


_USED = None


class MemoryFeedbackStore(FeedbackStore):
    """An in-process store of at most `max_rows` rows, and of at most `max_rows_per_context`
    rows waiting for labels per context: a context over its share loses its own oldest rows,
    never another context's; past `max_rows`, the oldest rows of all go first."""

    def __init__(
        self, ttl_seconds: float, max_rows: int, max_rows_per_context: int | None = None
    ) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_rows = max_rows
        self.max_rows_per_context = max_rows_per_context or max_rows
        # id -> (expiry, row or None once used); insertion order is creation order.
        self._rows: OrderedDict[str, tuple[float, Remembered | None]] = OrderedDict()
        # context index -> its ids still waiting for labels, oldest first.
        self._waiting: dict[int, OrderedDict[str, None]] = defaultdict(OrderedDict)
        # context index -> ids created at or before this time (ms) may have been pushed out.
        self._pushed_out_ms: dict[int, int] = defaultdict(lambda: -1)
        self._pushed_out_by_total_ms = -1

    def _expire(self) -> None:
        now = time.time()
        while self._rows:
            oldest = next(iter(self._rows))
            if self._rows[oldest][0] > now:
                break
            self._drop(oldest)

    def _drop(self, prediction_id: str) -> float:
        """Forgets an id; returns its expiry."""
        expiry, _ = self._rows.pop(prediction_id)
        parsed = parse_id(prediction_id)
        if parsed is not None:
            self._waiting[parsed.context_index].pop(prediction_id, None)
        return expiry

    async def remember(self, ids: Sequence[str], rows: Sequence[Remembered]) -> None:
        self._expire()
        expiry = time.time() + self.ttl_seconds
        for prediction_id, row in zip(ids, rows, strict=True):
            self._rows[prediction_id] = (expiry, row)
            parsed = parse_id(prediction_id)
            if parsed is not None:
                self._keep_within_share(parsed.context_index, prediction_id, parsed.created_ms)
        while len(self._rows) > self.max_rows:
            oldest_expiry = self._drop(next(iter(self._rows)))
            created_ms = int((oldest_expiry - self.ttl_seconds) * 1000)
            self._pushed_out_by_total_ms = max(self._pushed_out_by_total_ms, created_ms)

    def _keep_within_share(self, context: int, prediction_id: str, created_ms: int) -> None:
        waiting = self._waiting[context]
        waiting[prediction_id] = None
        while len(waiting) > self.max_rows_per_context:
            oldest, _ = waiting.popitem(last=False)
            self._rows.pop(oldest, None)
            pushed = parse_id(oldest)
            if pushed is not None:
                mark = max(self._pushed_out_ms[context], pushed.created_ms)
                self._pushed_out_ms[context] = mark

    async def look(self, ids: Sequence[str]) -> Claim:
        self._expire()
        missing = [i for i in ids if i not in self._rows]
        used = [i for i in ids if i in self._rows and self._rows[i][1] is _USED]
        if missing or used:
            return Claim([], missing, used)
        return Claim([row for _, row in (self._rows[i] for i in ids) if row is not None], [], [])

    async def claim(self, ids: Sequence[str]) -> Claim:
        looked = await self.look(ids)
        if not looked.rows:
            return looked
        for prediction_id in ids:
            expiry, _ = self._rows[prediction_id]
            self._rows[prediction_id] = (expiry, _USED)
            parsed = parse_id(prediction_id)
            if parsed is not None:
                self._waiting[parsed.context_index].pop(prediction_id, None)
        return looked

    async def pushed_out(self, ids: Sequence[str]) -> list[str]:
        gone = []
        for prediction_id in ids:
            parsed = parse_id(prediction_id)
            if parsed is None:
                continue
            mark = max(self._pushed_out_ms[parsed.context_index], self._pushed_out_by_total_ms)
            if parsed.created_ms <= mark:
                gone.append(prediction_id)
        return gone

    async def close(self) -> None:
        self._rows.clear()
        self._waiting.clear()
