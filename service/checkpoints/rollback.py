"""Rolling a shard back to a kept checkpoint: who can do it, and how it can fail.

In the `all` role the API calls the trainer, a `RollbackTarget`, directly. In the split roles
the API process relays the command through Redis (`service.checkpoints.rollback_sender`) to the
worker, whose trainer takes it from its inbox (`service.checkpoints.rollback_inbox`).

The command on the shard's control list is JSON: `{"op": "rollback", "version": <int>,
"reply": <key>}`. The worker pushes its answer to the `reply` key: `{"version": <int>}` (the
version now trained), `{"error": <text>}` (`RollbackFailed`) or `{"not_done": <text>}`
(`RollbackNotDone`).
"""

from __future__ import annotations

from typing import Protocol


class RollbackFailed(Exception):
    """The requested version is not among the kept checkpoints (or the worker refused)."""


class RollbackNotDone(Exception):
    """The rollback did not happen: the worker could not be reached, or did not take the
    command in time and it was withdrawn."""


class RollbackUnanswered(Exception):
    """The worker may have taken the rollback, but its answer did not come: whether it
    happened is unknown."""


class RollbackTarget(Protocol):
    """What rolls a shard back: its trainer, or the API's relay to the shard's worker."""

    async def rollback(self, version: int) -> int:
        """Restores checkpointed `version`; returns the version now trained and served."""
        ...
