"""The trainer's ledger: staged checkpoints change nothing until adopted."""

from __future__ import annotations

import json

from service.training.ledger import CountBatch, Ledger


def _applied(ledger: Ledger, entry_ids: list[str], index: int, seen: int, right: int) -> None:
    ledger.progress.entry_ids += entry_ids
    counts = ledger.progress.counts[index]
    counts[0] += seen
    counts[1] += right


def test_staging_changes_nothing_and_adopting_takes_the_staged_state() -> None:
    ledger = Ledger()
    _applied(ledger, ["5-0", "7-0"], index=3, seen=10, right=4)
    staged = ledger.stage()
    assert ledger.checkpointed_id is None and ledger.progress.entry_ids == ["5-0", "7-0"]
    assert staged.checkpointed_id == "7-0"
    assert staged.batches == (CountBatch("7-0", {3: (10, 4, 0)}),)
    assert staged.unacked == ("5-0", "7-0")
    ledger.adopt(staged)
    assert ledger.is_checkpointed("7-0") and not ledger.is_checkpointed("7-1")
    assert ledger.progress.entry_ids == [] and ledger.unsettled
    _applied(ledger, ["9-0"], index=3, seen=2, right=2)
    again = ledger.stage()  # the first batch was not counted yet: both go, in order
    assert [b.last_entry_id for b in again.batches] == ["7-0", "9-0"]


def test_a_checkpoint_s_metadata_restores_its_batches() -> None:
    ledger = Ledger()
    _applied(ledger, ["5-0"], index=1, seen=3, right=1)
    ledger.adopt(ledger.stage())
    _applied(ledger, ["6-0"], index=2, seen=1, right=0)
    metadata = ledger.stage().metadata()
    restored = Ledger()
    restored.restore(metadata)
    assert restored.checkpointed_id == "6-0"
    assert restored.batches == [
        CountBatch("5-0", {1: (3, 1, 0)}),
        CountBatch("6-0", {2: (1, 0, 0)}),
    ]
    assert restored.unacked == []


def test_a_checkpoint_from_before_batches_restores_one_batch() -> None:
    ledger = Ledger()
    ledger.restore({"last_entry_id": "8-0", "counts": json.dumps({"4": [5, 2]})})
    assert ledger.batches == [CountBatch("8-0", {4: (5, 2, 0)})]
