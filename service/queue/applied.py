"""The fan-out of applied notices: the trainer tells producers waiting with `?wait=true` that it
is done with their entries.

The trainer publishes the newest entry id it took with the model version that holds it, so a
producer waiting on any entry up to that id is settled by one notice; refusals travel with it.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence

REFUSALS_KEPT_SECONDS = 600
"""How long the reason of a refused entry is kept for producers waiting on it."""


class AppliedNotices(abc.ABC):
    """Published by the single trainer, awaited by any number of producers (Redis: in any
    process; in-process: in this one)."""

    @abc.abstractmethod
    async def publish(
        self,
        entry_ids: Sequence[str],
        model_version: int,
        refused: Mapping[str, str] | None = None,
    ) -> None:
        """Tells waiting producers that the trainer is done with these entries.

        A publish older than one before it (by newest entry id) changes nothing, so waiters
        never move backwards.

        Args:
            entry_ids: The entries the trainer took.
            model_version: The version that holds them.
            refused: Entry id -> why the trainer refused a step holding its rows; such an
                entry is not in the weights. Kept for `REFUSALS_KEPT_SECONDS`.

        Raises:
            QueueUnavailable: The backing store cannot be reached.
        """

    @abc.abstractmethod
    async def wait(self, entry_id: str, timeout: float) -> int:
        """Waits until the trainer is done with `entry_id` and returns the model version then;
        `refusal` tells whether the entry made it into the weights.

        Raises:
            TimeoutError: Not applied within `timeout` seconds.
            QueueUnavailable: The backing store cannot be reached.
        """

    @abc.abstractmethod
    async def refusal(self, entry_id: str) -> str | None:
        """Why the trainer refused `entry_id` (see `publish`), or None if it did not."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Releases connections."""
