"""The model state shared with a training child: one lock, version and health flag; a lock
held by a process that dies is free the moment it is dead."""

from __future__ import annotations

import threading
import time
from typing import Any

from service.model.state import ProcessLock, SharedModelState
from service.model.step_child import process_context


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


def test_a_lock_held_by_a_process_that_dies_is_free_at_once() -> None:
    lock = ProcessLock()
    taken = process_context().Event()
    process = process_context().Process(target=_take_and_hang, args=(lock, taken))  # type: ignore[attr-defined]
    process.start()
    try:
        assert taken.wait(30)
        assert not lock.acquire(False)  # held by the living child
    finally:
        process.kill()  # kill -9: it never gives the lock back itself, at any point
        process.join(30)
    assert lock.acquire(True, 5)
    lock.release()


def _take_and_hang(lock: ProcessLock, taken: Any) -> None:
    lock.acquire()
    taken.set()
    time.sleep(60)


def test_the_lock_keeps_threads_of_one_process_apart_too() -> None:
    lock = ProcessLock()
    assert lock.acquire(False)
    outcome: list[bool] = []
    thread = threading.Thread(target=lambda: outcome.append(lock.acquire(True, 0.2)))
    thread.start()
    thread.join()
    assert outcome == [False]
    lock.release()
    assert lock.acquire(False)
    lock.release()
