"""What predict and the trainer both read of one model besides its weights: the lock that makes
a step atomic, the version served and whether the weights are healthy.

`LocalModelState` serves a model whose trainer runs in the same process. `SharedModelState`
lives in shared memory, for a model whose steps run in a child process
(`service.model.step_client`): the API's predictions and the child's steps then take the
same lock and read the same version.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
import time
from multiprocessing.context import BaseContext
from types import TracebackType
from typing import Protocol


class ModelLock(Protocol):
    def acquire(self, block: bool = ..., timeout: float = ..., /) -> bool: ...

    def release(self) -> None: ...

    def __enter__(self) -> bool: ...

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...


class ModelState(Protocol):
    @property
    def lock(self) -> ModelLock: ...

    version: int
    healthy: bool


class LocalModelState:
    """The state of a model that one process reads and writes."""

    def __init__(self) -> None:
        self.lock: ModelLock = threading.Lock()
        self.version = 0
        self.healthy = True


class ProcessLock:
    """A lock shared by processes, which the kernel gives back the moment its holder dies.

    Between processes it is an exclusive `flock` on a file of its own; within a process a
    thread lock keeps threads apart first (`flock` is per open file, not per thread). A
    process killed at any point, even right after it took the lock, holds nothing once it is
    dead, so no step child that dies leaves predictions waiting.

    Pickled into a child process, it opens the file again there.
    """

    def __init__(self) -> None:
        handle, path = tempfile.mkstemp(prefix="psp-model-lock-")
        os.close(handle)
        self.path = path
        self._owner = os.getpid()  # the process that made the file removes it
        self._open()

    def _open(self) -> None:
        self._threads = threading.Lock()
        self._fd = os.open(self.path, os.O_RDWR)

    def __getstate__(self) -> dict[str, object]:
        return {"path": self.path, "_owner": self._owner}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._open()

    def acquire(self, block: bool = True, timeout: float = -1, /) -> bool:
        if not self._threads.acquire(block, timeout):
            return False
        try:
            if self._flock(block, timeout):
                return True
        except BaseException:
            self._threads.release()
            raise
        self._threads.release()
        return False

    def _flock(self, block: bool, timeout: float) -> bool:
        if block and timeout < 0:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            return True
        deadline = time.monotonic() + (timeout if block else 0.0)
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.001)

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._threads.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def close(self) -> None:
        """Closes the file, and removes it in the process that made it."""
        with contextlib.suppress(OSError):
            os.close(self._fd)
        if os.getpid() == self._owner:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


class SharedModelState:
    """The state of a model whose weights are in shared memory, read by the API process and
    written by its training child; passed to the child when it starts."""

    def __init__(self, context: BaseContext) -> None:
        self.lock = ProcessLock()
        self._version = context.RawValue("q", 0)
        self._healthy = context.RawValue("b", 1)

    @property
    def version(self) -> int:
        return int(self._version.value)

    @version.setter
    def version(self, value: int) -> None:
        self._version.value = value

    @property
    def healthy(self) -> bool:
        return bool(self._healthy.value)

    @healthy.setter
    def healthy(self, value: bool) -> None:
        self._healthy.value = int(value)
