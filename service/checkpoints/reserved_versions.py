"""Versions reserved on disk ahead of use, so that a process serving its live weights never
names two states with one version across its rewinds and crashes.

A process in role `all` serves the versions it trains, which run ahead of its newest
checkpoint. Were a restart or a rewind to continue from the checkpoint's version, the versions
served between the checkpoint and the crash would name other weights a second time, and a
client would see the version go down. So the writer keeps a mark on disk above every version it
has named: it moves the mark a block ahead (written and fsynced) well before its versions reach
it, and a restored state is named from the mark up. The cost is one small write per
`RESERVE_BLOCK / 2` steps, and versions that jump by up to a block at each restore after a
crash or a rewind. A clean stop brings the mark down to the version of its final checkpoint, so
a restart after it continues without a jump.

Role `worker` needs none of this: its API replicas serve only checkpointed versions.
"""

from __future__ import annotations

from pathlib import Path

from psp_core.checkpoint import write_checkpoint

RESERVE_BLOCK = 100_000
"""Versions reserved at a time; the mark moves once versions come within half of it, so one
apply (at most a few thousand steps) never outruns it."""

FILE_NAME = "reserved-versions"


class ReservedVersions:
    """The on-disk mark above every version this shard's writer has named.

    Args:
        directory: The shard's checkpoint directory.
    """

    def __init__(self, directory: Path) -> None:
        self._path = directory / FILE_NAME
        self.mark = _read_mark(self._path)

    def restored(self, checkpoint_version: int) -> int:
        """The version to name a state restored from a checkpoint of `checkpoint_version`:
        above every version named before, by this process or one that crashed."""
        return max(checkpoint_version, self.mark)

    def settle(self, version: int) -> None:
        """A clean stop: no version above `version` was served, and a checkpoint holds that
        state. The mark comes down to it, so the next start continues from it, not above."""
        self._write(version)

    def covers(self, version: int) -> bool:
        """Whether the mark is still at least half a block above `version`."""
        return version + RESERVE_BLOCK // 2 <= self.mark

    def cover(self, version: int) -> None:
        """Moves the mark a block past `version` when `version` has come within half a block
        of it; the mark is durable before this returns."""
        if self.covers(version):
            return
        self._write(version + RESERVE_BLOCK)

    def _write(self, mark: int) -> None:
        write_checkpoint(self._path, f"{mark}\n".encode())  # atomic and fsynced
        self.mark = mark


def _read_mark(path: Path) -> int:
    """The stored mark, 0 when there is none yet."""
    try:
        return int(path.read_text(encoding="ascii").strip() or 0)
    except FileNotFoundError:
        return 0
