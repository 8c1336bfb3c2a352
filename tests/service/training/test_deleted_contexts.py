"""Deleted contexts stay deleted in kept checkpoints, even when forgetting them fails once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.checkpoints.store import CheckpointStore
from service.training import deleted_contexts
from service.training.deleted_contexts import DeletedContexts


class _Registry:
    """Says that context 7 was deleted."""

    async def retired_since(self, since: Any) -> list[tuple[str, int]]:
        return [("gone", 7)]


class _DyingHost:
    """A host whose first `forget_contexts` finds its step process dead."""

    def __init__(self) -> None:
        self.calls = 0

    def forget_contexts(self, indices: set[int]) -> int:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("the training child died during 'forget_contexts'")
        return len(indices)


async def test_a_deletion_whose_forgetting_failed_is_still_scrubbed_from_kept_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CheckpointStore(tmp_path, keep=3)
    (tmp_path / "ckpt-0000000001-v1.safetensors").write_bytes(b"")
    scrubbed: list[tuple[str, set[int]]] = []

    def forget_contexts_in(path: Path, deleted: set[int]) -> int:
        scrubbed.append((path.name, set(deleted)))
        return 1

    monkeypatch.setattr(deleted_contexts, "forget_contexts_in", forget_contexts_in)
    deleted = DeletedContexts(_DyingHost(), _Registry(), store, look_every=0.0)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        await deleted.forget_retired()
    # The deletion was read; the files that may hold its rows must still be scrubbed.
    assert deleted.scrub_due
    await deleted.scrub_kept_checkpoints()
    assert [(name, indices) for name, indices in scrubbed if 7 in indices] != []
    assert not deleted.scrub_due


async def test_a_scrub_that_fails_half_way_is_done_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CheckpointStore(tmp_path, keep=3)
    for version in (1, 2):
        (tmp_path / f"ckpt-000000000{version}-v{version}.safetensors").write_bytes(b"")
    attempts: list[str] = []

    def forget_contexts_in(path: Path, deleted: set[int]) -> int:
        attempts.append(path.name)
        if len(attempts) == 1:
            raise OSError(28, "No space left on device")
        return 1

    monkeypatch.setattr(deleted_contexts, "forget_contexts_in", forget_contexts_in)
    host = _DyingHost()
    host.calls = 1  # forgetting works
    deleted = DeletedContexts(host, _Registry(), store, look_every=0.0)  # type: ignore[arg-type]
    await deleted.forget_retired()
    with pytest.raises(OSError):
        await deleted.scrub_kept_checkpoints()
    assert deleted.scrub_due
    await deleted.scrub_kept_checkpoints()
    assert len(attempts) == 3 and not deleted.scrub_due
