"""Which row of the in-memory bank holds each context.

Registry indices mean the same in every process and restart; bank rows depend on the order in
which a process learned of its contexts. The rows of deleted contexts are let go and reused
first, so that the bank holds what is live, not everything ever registered. The host holds the
model lock around every change and every look-up a forward pass uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from psp_core.bank import ContextBank, PreparedContexts


class UnknownContext(KeyError):
    """A registry index the host has no bank row for: its context was deleted."""

    def __str__(self) -> str:
        return (
            f"the context (index {self.args[0]}) was deleted; register it again with "
            "POST /contexts before using it"
        )


class BankRows:
    """The bank row of each registry index the host serves, and the rows free for reuse."""

    def __init__(self) -> None:
        self._rows: dict[int, int] = {}
        self._free: list[int] = []  # bank rows of deleted contexts, reused first
        self.max_index = -1  # the highest registry index placed, -1 when none

    def __contains__(self, index: int) -> bool:
        return index in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def of(self, indices: Sequence[int] | np.ndarray) -> list[int]:
        """The bank rows of registry indices, in order.

        Raises:
            UnknownContext: An index has no row (its context was deleted).
        """
        try:
            return [self._rows[int(i)] for i in indices]
        except KeyError as err:
            raise UnknownContext(err.args[0]) from None

    def place(self, indices: Sequence[int], bank: ContextBank, prepared: PreparedContexts) -> None:
        """Writes the prepared contexts of `indices` into the bank: into free rows first, then
        appended."""
        reused = self._free[: len(indices)]
        del self._free[: len(reused)]
        placed, appended = prepared.split(len(reused))
        bank.place_prepared(reused, placed)
        rows = [*reused, *bank.append_prepared(appended)]
        self._rows.update(zip(indices, rows, strict=True))
        self.max_index = max(self.max_index, *indices)

    def release(self, indices: set[int]) -> None:
        """Lets the rows of deleted contexts go, for the next new contexts."""
        self._free.extend(self._rows.pop(index) for index in indices if index in self._rows)
