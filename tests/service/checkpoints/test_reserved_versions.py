"""Versions reserved on disk ahead of use: the mark survives the process, moves a block ahead
only when versions come near it, and names restored states above it."""

from __future__ import annotations

from pathlib import Path

from service.checkpoints.reserved_versions import RESERVE_BLOCK, ReservedVersions


def test_the_mark_moves_a_block_ahead_only_when_versions_come_within_half_a_block(
    tmp_path: Path,
) -> None:
    reserved = ReservedVersions(tmp_path)
    assert reserved.mark == 0 and not reserved.covers(0)
    reserved.cover(7)
    assert reserved.mark == 7 + RESERVE_BLOCK
    reserved.cover(7 + RESERVE_BLOCK // 2)  # exactly half a block below: still covered
    assert reserved.mark == 7 + RESERVE_BLOCK
    reserved.cover(8 + RESERVE_BLOCK // 2)
    assert reserved.mark == 8 + RESERVE_BLOCK // 2 + RESERVE_BLOCK


def test_a_successor_names_its_restored_state_above_every_version_reserved_before(
    tmp_path: Path,
) -> None:
    ReservedVersions(tmp_path).cover(41)  # the process that then crashed
    successor = ReservedVersions(tmp_path)
    assert successor.mark == 41 + RESERVE_BLOCK
    assert successor.restored(30) == 41 + RESERVE_BLOCK  # its newest checkpoint was older
    assert successor.restored(10 * RESERVE_BLOCK) == 10 * RESERVE_BLOCK
    assert [p.name for p in tmp_path.iterdir()] == ["reserved-versions"]  # no temporary left


def test_a_clean_stop_brings_the_mark_down_to_its_final_version(tmp_path: Path) -> None:
    reserved = ReservedVersions(tmp_path)
    reserved.cover(12)
    reserved.settle(15)
    successor = ReservedVersions(tmp_path)
    assert successor.mark == 15
    assert successor.restored(15) == 15  # the final checkpoint's version, no jump
