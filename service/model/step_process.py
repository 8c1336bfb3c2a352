"""The one child process that runs the training steps of every shard of an API process (role
`all` on the CPU): the shards that share a machine share one step process.

A child per shard put eight step processes on two cores with `PSP_SHARDS__COUNT=8`, and torch's
threads in each fought the others' for the cores. Here each shard's host
(`service.model.step_client.ChildStepHost`) takes a seat in one `StepProcess`: its settings,
its weights in shared memory, its shared model state and its step watchers. The child
(`service.model.step_child.serve`) builds a host per seat and runs the steps of one shard at a
time; each seat still has its own pipes, weights, optimiser and replay buffer.

Every seat is taken before the child starts: the shared model state holds `multiprocessing`
values that can be passed to a child only as it starts, so a seat taken while a child runs is
refused. The child starts at the first call of any host; a child that dies is started again, for
every seat still taken, at the next call of any host, and each host finds its own pipes dead
and is buried on its own (`ChildStepHost._bury`). The child stops when the last seat is left.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing.util
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess

import torch

from service.model.state import SharedModelState
from service.model.step_child import Seat, process_context, serve
from service.model.training_hooks import StepWatcherFactory
from service.settings import Settings

log = logging.getLogger(__name__)

_STOP_WAIT_SECONDS = 30.0


@dataclass(frozen=True, eq=False)  # one seat per host: compared by identity
class ShardSeat:
    """What the child needs to run one shard's steps.

    Attributes:
        model: The API process's model, whose parameters are in shared memory; the child
            writes them in place.
        step_watchers: Pickled to the child, which builds its own watchers from them.
    """

    settings: Settings
    model: torch.nn.Module
    state: SharedModelState
    step_watchers: tuple[StepWatcherFactory, ...]

    @property
    def number(self) -> int:
        return self.settings.queue.shard


@dataclass(frozen=True)
class SeatPipes:
    """The two pipes of one seat to a running child."""

    steps: Connection  # everything that changes the model, one command at a time
    contexts: Connection  # new contexts, answered by a thread of their own in the child

    def close(self) -> None:
        self.steps.close()
        self.contexts.close()


@dataclass(frozen=True, eq=False)  # a child is told from its successor by identity
class StepChild:
    """A running child and the pipes of each seat it serves."""

    process: BaseProcess
    pipes: dict[ShardSeat, SeatPipes]


class StepProcess:
    """Starts, replaces and stops the one child that steps every seated shard."""

    def __init__(self) -> None:
        self.context: BaseContext = process_context()
        self._lock = threading.Lock()  # one child at a time, whichever hosts race to start it
        self._seats: list[ShardSeat] = []
        self._child: StepChild | None = None

    def take_seat(
        self,
        settings: Settings,
        model: torch.nn.Module,
        state: SharedModelState,
        step_watchers: Sequence[StepWatcherFactory] = (),
    ) -> ShardSeat:
        """Seats one shard in the child started next.

        Raises:
            RuntimeError: A child runs already; every shard must be seated before the first
                call of any host.
        """
        with self._lock:
            if self._child is not None:
                raise RuntimeError(
                    f"shard {settings.queue.shard} cannot join the running step process "
                    f"{self._child.process.pid}: build every shard's host before the first "
                    "call to any of them"
                )
            seat = ShardSeat(settings, model, state, tuple(step_watchers))
            self._seats.append(seat)
            return seat

    def running(self, seat: ShardSeat) -> StepChild:
        """The running child, started for every seat if none runs.

        Raises:
            RuntimeError: `seat` was left.
        """
        with self._lock:
            if seat not in self._seats:
                raise RuntimeError(f"shard {seat.number} has left the step process")
            if self._child is None:
                self._child = self._start()
            return self._child

    def lost(self, child: StepChild) -> None:
        """Forgets `child`, which a host found dead, so that the next call starts another; each
        other host finds it dead on its own next call."""
        with self._lock:
            if self._child is child:
                self._child = None
            # No successor starts before this one is gone: two would write the same weights.
            child.process.join(_STOP_WAIT_SECONDS)
            if child.process.is_alive():
                log.warning("the training child %d lost its pipes; killing it", child.process.pid)
                child.process.kill()
                child.process.join()

    def leave(self, seat: ShardSeat) -> None:
        """Gives up `seat`, whose host makes no more calls; the last seat left stops the
        child, after the commands in flight."""
        with self._lock:
            if seat not in self._seats:
                return
            self._seats.remove(seat)
            child = self._child
            if child is None:
                return
            if self._seats:  # the child goes on for the others; this seat's threads end
                pipes = child.pipes[seat]
                with contextlib.suppress(OSError):
                    pipes.steps.send(("stop", ()))
                pipes.close()
                return
            self._child = None
            self._stop(child)

    @property
    def pid(self) -> int | None:
        """The running child's process id, None when none runs."""
        child = self._child
        return None if child is None else child.process.pid

    def _start(self) -> StepChild:
        pipes: dict[ShardSeat, SeatPipes] = {}
        served: list[Seat] = []
        for seat in self._seats:
            steps, child_steps = self.context.Pipe()
            contexts, child_contexts = self.context.Pipe()
            pipes[seat] = SeatPipes(steps, contexts)
            parameters: dict[str, torch.Tensor] = dict(seat.model.named_parameters())
            served.append(
                Seat(
                    child_steps,
                    child_contexts,
                    seat.settings,
                    parameters,
                    seat.state,
                    seat.step_watchers,
                )
            )
        process = self.context.Process(  # type: ignore[attr-defined]
            target=serve, args=(served,), name="psp-steps", daemon=True
        )
        process.start()
        for child_end in served:
            child_end.steps.close()
            child_end.contexts.close()
        # A child ends when its pipes close. multiprocessing joins its children at exit, and
        # this child ignores SIGTERM, so the pipes must close before that join: a host that was
        # never `close`d (a start-up that failed) would otherwise hang the exit.
        for seat_pipes in pipes.values():
            for end in (seat_pipes.steps, seat_pipes.contexts):
                multiprocessing.util.Finalize(end, end.close, exitpriority=10)
        log.info(
            "the training steps of shard(s) %s run in child process %d",
            ", ".join(str(seat.number) for seat in self._seats),
            process.pid,
        )
        return StepChild(process, pipes)

    def _stop(self, child: StepChild) -> None:
        for pipes in child.pipes.values():
            with contextlib.suppress(OSError):  # a seat left already, or the child is dead
                pipes.steps.send(("stop", ()))
        child.process.join(_STOP_WAIT_SECONDS)
        if child.process.is_alive():
            log.warning("the training child %d did not stop; killing it", child.process.pid)
            child.process.kill()
            child.process.join()
        for pipes in child.pipes.values():
            pipes.close()
