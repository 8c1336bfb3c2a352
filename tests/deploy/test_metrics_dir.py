"""`psp serve --workers N` keeps its processes' metric files to itself.

Replicas in several containers share the data volume and reuse the same process ids, so a
metrics directory on that volume would mix (and, if emptied at start, wipe) each other's files.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.cli.commands import private_metrics_dir


def test_a_fresh_private_directory_is_used_and_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setenv("PSP_DATA_DIR", str(tmp_path))
    other_replica = tmp_path / "prometheus" / "counter_7.db"
    other_replica.parent.mkdir()
    other_replica.write_bytes(b"another replica's counters")

    with private_metrics_dir() as directory:
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(directory)
        assert directory.is_dir() and list(directory.iterdir()) == []
        assert tmp_path not in directory.parents
        (directory / "counter_7.db").write_bytes(b"mine")
        with private_metrics_dir() as second:
            assert second == directory, "a nested use keeps the same directory"

    assert not directory.exists()
    assert other_replica.read_bytes() == b"another replica's counters"
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ


def test_an_operators_directory_is_kept_with_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    preset = tmp_path / "metrics"
    preset.mkdir()
    (preset / "gauge_max_3.db").write_bytes(b"kept")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(preset))
    with private_metrics_dir() as directory:
        assert directory == preset
    assert (preset / "gauge_max_3.db").read_bytes() == b"kept"
