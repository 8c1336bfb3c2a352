"""The entries of failed applies: while an apply runs its entries are in flight; when it fails,
several become suspects, replayed one at a time, and one alone that fails again is poison and
goes to the dead-letter store with its reason, so the queue moves on."""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence

from service.model.host import ModelHost
from service.queue.applied import AppliedNotices
from service.queue.base import QueuedEntry, QueueUnavailable, TrainQueue
from service.registry.store import RegistryUnavailable
from service.settings import GuardSettings
from service.training.trainer_metrics import TrainerMetrics
from service.training.writer_lease import LeaseLapsed

log = logging.getLogger(__name__)

STORE_ERRORS = (QueueUnavailable, RegistryUnavailable, OSError, LeaseLapsed)
"""Failures of the stores the trainer works with: no entry's fault."""

SET_ASIDE = (
    "the trainer set this batch aside without learning it ({}); it is kept with the dead "
    "letters (GET /model/dead-letters), so check its rows before sending them again"
)


class Quarantine:
    """Tracks the entries of the apply under way and judges them when it fails.

    Args:
        queue: Where poison entries are dead-lettered.
        applied: Tells a poison entry's waiting producer why nothing was learned.
        host: Gives the model version the notice carries.
        guard: Says after how many failed single-entry applies an entry is poison.
        trainer_metrics: Counts dead-lettered entries and examples.
    """

    def __init__(
        self,
        queue: TrainQueue,
        applied: AppliedNotices,
        host: ModelHost,
        guard: GuardSettings,
        trainer_metrics: TrainerMetrics,
    ) -> None:
        self._queue = queue
        self._applied = applied
        self._host = host
        self._poison_attempts = guard.poison_attempts
        self._metrics = trainer_metrics
        # Set when an apply failed part-way: the weights hold effects no entry accounts for,
        # so nothing may be checkpointed until the trainer has rewound.
        self.needs_rewind = False
        self.failure = ""  # why the last failed apply failed
        self._in_flight: list[QueuedEntry] = []
        self._suspects: set[str] = set()  # replayed one at a time after a failed apply
        self._attempts: dict[str, int] = defaultdict(int)  # failed single-entry applies

    @property
    def in_flight(self) -> int:
        """How many entries the apply under way (or the failed one) holds."""
        return len(self._in_flight)

    @contextlib.contextmanager
    def applying(self, fresh: Sequence[QueuedEntry]) -> Iterator[None]:
        """Holds `fresh` in flight while the block applies them. If it raises, the weights need
        a rewind, and the entries stay in flight for `set_aside_after` unless a store failed;
        if it succeeds, none of them is a suspect any more."""
        self._in_flight = list(fresh)
        try:
            yield
        except Exception as err:
            self.needs_rewind = True
            self.failure = f"{type(err).__name__}: {err}"
            if isinstance(err, STORE_ERRORS):
                self._in_flight = []
            raise
        self._in_flight = []
        self._suspects.difference_update(e.entry_id for e in fresh)
        for queued in fresh:
            self._attempts.pop(queued.entry_id, None)

    def isolating_suspects(self, entries: Sequence[QueuedEntry]) -> list[list[QueuedEntry]]:
        """Splits entries, in id order, so that each suspect is applied alone."""
        groups: list[list[QueuedEntry]] = [[]]
        for queued in entries:
            if queued.entry_id in self._suspects:
                groups += [[queued], []]
            else:
                groups[-1].append(queued)
        return [group for group in groups if group]

    async def set_aside_after(self, reason: str, *, poison_now: bool) -> None:
        """Judges the entries of the failed apply: several become suspects, to be replayed one
        at a time; one alone is poison now (`poison_now`) or after `poison_attempts` failures."""
        culprits, self._in_flight = self._in_flight, []
        if len(culprits) != 1:
            self._suspects.update(queued.entry_id for queued in culprits)
            return
        queued = culprits[0]
        self._attempts[queued.entry_id] += 1
        attempts = self._attempts[queued.entry_id]
        if not poison_now and attempts < self._poison_attempts:
            return
        if not poison_now:
            reason = f"its training step failed {attempts} times, last with {reason}"
        await self._dead_letter(queued, reason)

    async def _dead_letter(self, queued: QueuedEntry, reason: str) -> None:
        log.error("setting aside train entry %s: %s", queued.entry_id, reason)
        await self._queue.dead_letter([(queued, reason)])
        self._metrics.dead_lettered_entries.inc()
        self._metrics.dead_lettered_examples.inc(queued.entry.size)
        # Every entry before it is applied by now (entries are applied in id order), so the
        # notice settles only its own producer, who hears at once why nothing was learned.
        await self._applied.publish(
            [queued.entry_id], self._host.model_version, {queued.entry_id: SET_ASIDE.format(reason)}
        )
        self._suspects.discard(queued.entry_id)
        del self._attempts[queued.entry_id]
