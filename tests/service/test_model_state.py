"""The model state shared with a training child: one lock, version and health flag, and a
lock left held by a dead process can be given back."""

from __future__ import annotations

from service.model_state import ProcessLock, SharedModelState
from service.step_process import process_context


def _take_and_exit(lock: ProcessLock) -> None:
    lock.acquire()  # and never release: the process ends holding it


def test_the_state_a_child_writes_is_read_here() -> None:
    state = SharedModelState(process_context())
    process = process_context().Process(target=_write_state, args=(state,))  # type: ignore[attr-defined]
    process.start()
    process.join(30)
    assert process.exitcode == 0
    assert state.version == 42 and state.healthy is False


def _write_state(state: SharedModelState) -> None:
    state.version = 42
    state.healthy = False


def test_a_lock_held_by_a_dead_process_is_given_back_only_by_its_pid() -> None:
    lock = ProcessLock(process_context())
    process = process_context().Process(target=_take_and_exit, args=(lock,))  # type: ignore[attr-defined]
    process.start()
    process.join(30)
    assert process.pid is not None
    assert not lock.acquire(False)

    assert not lock.release_if_held_by(process.pid + 1)
    assert lock.release_if_held_by(process.pid)

    assert lock.acquire(False)
    lock.release()
