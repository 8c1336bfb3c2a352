"""Fault injection: read from `PSP_FAULTS__*` by the test-only `psp` entry point, installed
through the training hooks, and never part of the `psp` a deployment runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service.model.training_hooks import TrainingHooks, installed_training_hooks
from service.testing.faults import FaultInjector, FaultSettings, fault_hooks, injected_faults
from service.testing.processes import psp_command, psp_serve, psp_worker


def test_a_process_with_fault_settings_runs_the_faulty_entry_point(tmp_path: Path) -> None:
    faulty = [sys.executable, "-m", "service.testing.faulty_psp"]
    assert psp_command({"PSP_FAULTS__FAILING_STEPS": "1"}) == faulty
    assert psp_command({"PSP_DEVICE": "cpu"}) != faulty
    serve = psp_serve("api", {"PSP_FAULTS__NONFINITE_STEPS": "1"}, tmp_path)
    assert serve.command[: len(faulty) + 1] == [*faulty, "serve"]
    worker = psp_worker("worker", {}, tmp_path)
    assert worker.command[: len(psp_command()) + 1] == [*psp_command(), "worker"]


@pytest.mark.real_process
def test_the_faulty_entry_point_runs_the_psp_command_line() -> None:
    usage = subprocess.run(
        [sys.executable, "-m", "service.testing.faulty_psp", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={"PSP_FAULTS__FAILING_STEPS": "2", "PATH": ""},
    )
    assert "serve" in usage.stdout and "worker" in usage.stdout
    assert "fault injection is on" in usage.stderr and "failing_steps=2" in usage.stderr


def test_fault_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PSP_FAULTS__HUGE_LR_STEPS", "3")
    monkeypatch.setenv("PSP_FAULTS__DISK_FULL_WHILE", "/tmp/full")
    settings = FaultSettings()
    assert settings.huge_lr_steps == 3 and settings.disk_full_while == Path("/tmp/full")


def test_no_faults_install_no_hooks() -> None:
    assert fault_hooks(FaultSettings()) == TrainingHooks()


def test_injected_faults_last_as_long_as_the_block(tmp_path: Path) -> None:
    flag = tmp_path / "full"
    flag.touch()
    before = installed_training_hooks()
    with injected_faults(FaultSettings(nonfinite_steps=1, disk_full_while=flag)):
        hooks = installed_training_hooks()
        (watcher,) = hooks.new_step_watchers()
        assert isinstance(watcher, FaultInjector) and watcher.steps == 0
        with pytest.raises(OSError, match="No space left on device"):
            hooks.check_checkpoint_write()
    assert installed_training_hooks() is before
    before.check_checkpoint_write()  # nothing installed: the write goes ahead
