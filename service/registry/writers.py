"""The writer lease of each shard, kept in its `trainer_state` row.

One process may write a shard: train its model, checkpoint it, acknowledge its queue and count
its examples. A writer claims the shard for `lease_seconds` and renews the claim well before
it lapses; each claim gets a fencing token one above the last. The registry refuses the counts
of any token but the newest, and the Redis queue refuses its acknowledgements (see
`service.queue.lua`), so a writer that stalled past its lease and was replaced can change
nothing, even before it notices.

A claim succeeds when the shard has no holder, when the holder's lease has lapsed, when the
holder is this very process (`owner` is `host:pid`), or when the holder is a process of this
host that no longer runs (a writer killed and started again need not wait out its lease).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from service.registry.models import TrainerState, utcnow
from service.training.fencing import WriterFenced


@dataclass(frozen=True)
class Holder:
    """Who holds a shard's writer lease, and until when."""

    owner: str
    until: datetime


class WriterTaken(Exception):
    """Another live process holds the shard's writer lease."""

    def __init__(self, shard: int, holder: Holder) -> None:
        self.shard = shard
        self.holder = holder
        super().__init__(
            f"shard {shard} already has a writer: {holder.owner} holds it until "
            f"{holder.until:%H:%M:%S} UTC and renews it while it runs; stop that process, or "
            "start this one for another shard (psp worker --shard N)"
        )


def this_process() -> str:
    """The owner name of this process: `host:pid`."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _gone(owner: str) -> bool:
    """Whether `owner` names a process of this host that no longer runs."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _state(session: Session, shard: int) -> TrainerState:
    state = session.get(TrainerState, shard, with_for_update=True)
    if state is None:
        state = TrainerState(shard=shard, last_entry_id="0-0", writer_token=0, writer_owner="")
        session.add(state)
        session.flush()
    return state


def _other_live_holder(state: TrainerState | None, owner: str) -> Holder | None:
    """Who holds the lease in `state`, unless nobody does, it lapsed, it is `owner`, or it is a
    process of this host that no longer runs."""
    if state is None or state.lease_until is None or not state.writer_owner:
        return None
    if state.lease_until <= utcnow() or state.writer_owner == owner or _gone(state.writer_owner):
        return None
    return Holder(state.writer_owner, state.lease_until)


def holder(*, session: Session, shard: int) -> Holder | None:
    """The live holder of the shard's lease, if another process holds one."""
    return _other_live_holder(session.get(TrainerState, shard), this_process())


def claim(*, session: Session, shard: int, owner: str, lease_seconds: float) -> int:
    """Claims the shard for `owner` and returns the new fencing token.

    Raises:
        WriterTaken: Another live process holds the lease.
    """
    state = _state(session, shard)
    held = _other_live_holder(state, owner)
    if held is not None:
        raise WriterTaken(shard, held)
    state.writer_token += 1
    state.writer_owner = owner
    state.lease_until = utcnow() + timedelta(seconds=lease_seconds)
    return state.writer_token


def renew(*, session: Session, shard: int, token: int, lease_seconds: float) -> datetime:
    """Extends the lease of the writer with `token`; returns its new end.

    Raises:
        WriterFenced: A newer writer holds the shard.
    """
    state = _state(session, shard)
    if state.writer_token != token:
        raise WriterFenced(
            f"shard {shard}'s writer lease now belongs to {state.writer_owner or 'nobody'} "
            f"(token {state.writer_token}, this writer's is {token})"
        )
    state.lease_until = utcnow() + timedelta(seconds=lease_seconds)
    return state.lease_until


def release(*, session: Session, shard: int, token: int) -> None:
    """Ends the lease at once, if `token` still holds it (a clean stop)."""
    state = session.get(TrainerState, shard, with_for_update=True)
    if state is not None and state.writer_token == token:
        state.lease_until = None
        state.writer_owner = ""


def check_token(state: TrainerState, shard: int, token: int | None) -> None:
    """Refuses a write by any writer but the newest (`token` None: an unfenced caller).

    Raises:
        WriterFenced: `token` is not the shard's newest.
    """
    if token is not None and state.writer_token != token:
        raise WriterFenced(
            f"shard {shard}'s counts were refused: token {token} is stale, "
            f"{state.writer_owner or 'another writer'} holds token {state.writer_token}"
        )
