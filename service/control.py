"""Admin commands for the single writer: rollback to a kept checkpoint.

In the `all` role the API calls the trainer directly. In the split roles the API process
pushes the command onto a Redis list that the worker polls between steps, and waits for the
worker's reply on a per-request key.
"""

from __future__ import annotations

import json
import uuid
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.queue.base import QueueUnavailable
from service.queue.keys import ShardKeys


class RollbackFailed(Exception):
    """The requested version is not among the kept checkpoints (or the worker refused)."""


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
            answer = await self._redis.blpop([reply_key], timeout=self.timeout)
        except (RedisError, OSError) as err:
            raise QueueUnavailable(f"cannot reach the worker through Redis: {err}") from err
        if answer is None:
            raise TimeoutError(f"the worker did not answer the rollback within {self.timeout} s")
        reply = json.loads(answer[1])
        if "error" in reply:
            raise RollbackFailed(reply["error"])
        return int(reply["version"])


class ControlInbox:
    """Worker side: takes pending commands, runs them, replies."""

    def __init__(self, client: aioredis.Redis, keys: ShardKeys) -> None:
        self._redis = client
        self._keys = keys

    async def serve_one(self, target: RollbackTarget) -> bool:
        """Runs the oldest pending command, if any; returns whether there was one."""
        raw = await self._redis.lpop(self._keys.control)
        if raw is None:
            return False
        assert isinstance(raw, bytes | str)
        command = json.loads(raw)
        reply: dict[str, int | str]
        try:
            reply = {"version": await target.rollback(int(command["version"]))}
        except RollbackFailed as err:
            reply = {"error": str(err)}
        await self._redis.rpush(command["reply"], json.dumps(reply))
        await self._redis.expire(command["reply"], 60)
        return True
