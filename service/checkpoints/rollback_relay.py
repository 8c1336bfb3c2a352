"""Admin commands for the single writer: rollback to a kept checkpoint.

In the `all` role the API calls the trainer directly. In the split roles the API process
pushes the command onto a Redis list that the worker polls between steps, and waits for the
worker's reply on a per-request key. A command the worker has not taken when the API stops
waiting is withdrawn, so a rollback the caller heard had failed never happens later.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import NoReturn, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.queue.base import QueueUnavailable
from service.queue.keys import ShardKeys

WAIT_SLICE_SECONDS = 1.0
"""How long one BLPOP for the worker's reply blocks: below the socket timeout of the service's
Redis clients (`service.checkpoints.announcements.redis_client`)."""


class RollbackFailed(Exception):
    """The requested version is not among the kept checkpoints (or the worker refused)."""


class RollbackNotDone(Exception):
    """The rollback did not happen: the worker could not be reached, or did not take the
    command in time and it was withdrawn."""


class RollbackUnanswered(Exception):
    """The worker may have taken the rollback, but its answer did not come: whether it
    happened is unknown."""


class RollbackTarget(Protocol):
    async def rollback(self, version: int) -> int:
        """Restores checkpointed `version`; returns the version now trained and served."""
        ...


class RedisRollback:
    """API side of a rollback in split mode."""

    def __init__(self, client: aioredis.Redis, keys: ShardKeys, timeout: float = 30.0) -> None:
        self._redis = client
        self._keys = keys
        self.timeout = timeout

    async def rollback(self, version: int) -> int:
        reply_key = f"{self._keys.control}:reply:{uuid.uuid4().hex}"
        command = json.dumps({"op": "rollback", "version": version, "reply": reply_key})
        try:
            await self._redis.rpush(self._keys.control, command)
        except (RedisError, OSError) as err:
            raise RollbackNotDone(f"the worker cannot be reached through Redis ({err})") from err
        try:
            answer = await self._answer(reply_key)
        except (RedisError, OSError) as err:
            await self._withdraw(
                command,
                not_taken=f"Redis failed before the worker took the command ({err})",
                unanswered=f"the worker may have taken the rollback, but Redis failed ({err})",
            )
        if answer is None:
            await self._withdraw(
                command,
                not_taken=f"the worker did not take the command within {self.timeout} s "
                "(it may be down or busy)",
                unanswered=f"the worker took the rollback but did not answer within "
                f"{self.timeout} s",
            )
        reply = json.loads(answer)
        if "error" in reply:
            raise RollbackFailed(reply["error"])
        if "not_done" in reply:
            raise RollbackNotDone(reply["not_done"])
        return int(reply["version"])

    async def _answer(self, reply_key: str) -> bytes | str | None:
        """The worker's reply, or None after `timeout` seconds (rounded up to a whole slice).
        Each BLPOP blocks for one short slice: a block longer than the client's socket timeout
        would fail as a Redis error."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            answer = await self._redis.blpop([reply_key], timeout=WAIT_SLICE_SECONDS)
            if answer is not None:
                return answer[1]
        return None

    async def _withdraw(self, command: str, *, not_taken: str, unanswered: str) -> NoReturn:
        """Takes back a command the worker has not taken yet, so that a rollback the caller
        hears has failed never runs later. Raises `RollbackNotDone(not_taken)` when it was
        withdrawn, else `RollbackUnanswered(unanswered)`."""
        try:
            withdrawn = await self._redis.lrem(self._keys.control, 1, command)
        except (RedisError, OSError):
            withdrawn = 0
        if withdrawn:
            raise RollbackNotDone(not_taken)
        raise RollbackUnanswered(unanswered)


class ControlInbox:
    """Worker side: takes pending commands, runs them, replies."""

    def __init__(self, client: aioredis.Redis, keys: ShardKeys) -> None:
        self._redis = client
        self._keys = keys

    async def serve_one(self, target: RollbackTarget) -> bool:
        """Runs the oldest pending command, if any; returns whether there was one.

        Raises:
            QueueUnavailable: Redis cannot be reached.
        """
        try:
            raw = await self._redis.lpop(self._keys.control)
        except (RedisError, OSError) as err:
            raise QueueUnavailable(f"cannot read admin commands from Redis: {err}") from err
        if raw is None:
            return False
        assert isinstance(raw, bytes | str)
        command = json.loads(raw)
        reply: dict[str, int | str]
        try:
            reply = {"version": await target.rollback(int(command["version"]))}
        except RollbackFailed as err:
            reply = {"error": str(err)}
        except RollbackNotDone as err:
            reply = {"not_done": str(err)}
        try:
            await self._redis.rpush(command["reply"], json.dumps(reply))
            await self._redis.expire(command["reply"], 60)
        except (RedisError, OSError) as err:
            raise QueueUnavailable(
                f"cannot reply to an admin command through Redis: {err}"
            ) from err
        return True
