"""Threads that watch the service while the faults land: every checkpoint the writer publishes,
and the served model version.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import httpx
from safetensors import SafetensorError, safe_open

from service.testing.campaign.clients import ClientRecord

DELETE_GRACE_SECONDS = 10.0
"""How long after a delete was answered a new checkpoint may still hold the context's rows:
the writer's registry poll (1 s), its next checkpoint (1 s) and a PostgreSQL restart."""


def replay_contexts(path: Path) -> Counter[int]:
    """The rehearsal rows of a checkpoint file, counted by context index (registry index).

    Raises:
        OSError, SafetensorError: The file went (pruned) or is not a checkpoint.
    """
    with safe_open(str(path), framework="pt") as handle:
        stored: list[str] = handle.keys()
        if "replay.ids" not in stored:
            return Counter()
        return Counter(int(i) for i in handle.get_tensor("replay.ids").tolist())


class CheckpointWatch(threading.Thread):
    """Reads every checkpoint the writer publishes, soon after, and keeps each one that holds
    rows of a context deleted more than `DELETE_GRACE_SECONDS` before it was written: a delete
    reaches the writer within its registry poll, and its next checkpoint leaves the rows out
    (a rollback or a restore included)."""

    def __init__(self, directory: Path, record: ClientRecord, stop: threading.Event) -> None:
        super().__init__(name="campaign-checkpoint-watch", daemon=True)
        self.directory = directory
        self.record = record
        self.stop = stop
        self.read: set[str] = set()
        self.holding: list[str] = []

    def run(self) -> None:
        while not self.stop.wait(0.5):
            self.look()

    def look(self) -> None:
        if not self.directory.is_dir():
            return
        with self.record.lock:
            deleted = {
                t.index: (t.key, t.deleted_at)
                for t in self.record.tenants.values()
                if t.deleted_at is not None
            }
        for path in sorted(self.directory.glob("ckpt-*.safetensors")):
            if path.name in self.read:
                continue
            try:
                written = path.stat().st_mtime
                rows = replay_contexts(path)
            except (OSError, SafetensorError):
                continue  # pruned meanwhile
            self.read.add(path.name)
            for index, count in rows.items():
                key, deleted_at = deleted.get(index, ("", None))
                if deleted_at is not None and written - deleted_at > DELETE_GRACE_SECONDS:
                    self.holding.append(
                        f"{path.name} holds {count} rows of {key}, written "
                        f"{written - deleted_at:.0f} s after its delete"
                    )


class VersionWatch(threading.Thread):
    """Reads the served `model_version` of shard 0 every quarter second, and keeps every time
    it went down."""

    def __init__(self, base_url: str, stop: threading.Event) -> None:
        super().__init__(name="campaign-version-watch", daemon=True)
        self.base_url = base_url
        self.stop = stop
        self.samples = 0
        self.highest = 0
        self.decreases: list[str] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=5) as client:
            while not self.stop.wait(0.25):
                try:
                    version = int(client.get("/model").json()["model_version"])
                except (httpx.HTTPError, ValueError, KeyError):
                    continue
                self.samples += 1
                if version < self.highest:
                    self.decreases.append(f"{self.highest} -> {version} at {time.time():.3f}")
                self.highest = max(self.highest, version)
