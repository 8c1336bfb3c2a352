"""The checkpoint store: numbered safetensors files under the data directory, the last K kept.

Files are named `ckpt-<sequence>-v<model_version>.safetensors`. The sequence grows with every
write, so the newest file is always the one with the highest sequence, even after a rollback
restored an older model version.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_NAME = re.compile(r"^ckpt-(\d{10})-v(\d+)\.safetensors$")


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint file."""

    sequence: int
    version: int
    path: Path


def checkpoints_in(directory: Path) -> list[CheckpointInfo]:
    """The checkpoint files in `directory`, oldest first; none when it does not exist."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if match:
            found.append(CheckpointInfo(int(match[1]), int(match[2]), path))
    return sorted(found, key=lambda info: info.sequence)


class CheckpointStore:
    """Lists, names and prunes checkpoint files in one directory."""

    def __init__(self, directory: Path, keep: int) -> None:
        self.directory = directory
        self.keep = keep
        self._spared: set[Path] = set()
        directory.mkdir(parents=True, exist_ok=True)

    def list(self) -> list[CheckpointInfo]:
        """All checkpoints, oldest first."""
        return checkpoints_in(self.directory)

    def latest(self) -> CheckpointInfo | None:
        checkpoints = self.list()
        return checkpoints[-1] if checkpoints else None

    def find_version(self, version: int) -> CheckpointInfo | None:
        """The newest kept checkpoint of a model version."""
        matches = [info for info in self.list() if info.version == version]
        return matches[-1] if matches else None

    def next(self, version: int) -> CheckpointInfo:
        """Where the next checkpoint, of model `version`, goes."""
        latest = self.latest()
        sequence = latest.sequence + 1 if latest else 1
        path = self.directory / f"ckpt-{sequence:010d}-v{version}.safetensors"
        return CheckpointInfo(sequence, version, path)

    def info(self, name: str) -> CheckpointInfo | None:
        """The checkpoint with this file name, if it is (still) kept."""
        named = self.named(name)
        return named if named is not None and named.path.exists() else None

    def named(self, name: str) -> CheckpointInfo | None:
        """Where the checkpoint called `name` is (or would be) kept; None when `name` is not a
        checkpoint's file name."""
        match = _NAME.match(name)
        if not match:
            return None
        return CheckpointInfo(int(match[1]), int(match[2]), self.directory / name)

    def prune(self) -> None:
        """Deletes all but the newest `keep` checkpoints, and any one being spared."""
        for info in self.list()[: -self.keep]:
            if info.path not in self._spared:
                info.path.unlink(missing_ok=True)

    @contextmanager
    def sparing(self, info: CheckpointInfo) -> Iterator[None]:
        """Keeps `info` through any prune in the block: a rollback reads its target after
        writing the checkpoint before it, which may prune the oldest file."""
        self._spared.add(info.path)
        try:
            yield
        finally:
            self._spared.discard(info.path)
