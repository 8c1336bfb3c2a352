"""The worker side of a rollback in the split roles: takes the API's commands and answers.

The trainer calls `ControlInbox.serve_one` between steps; the command and reply formats are
described in `service.checkpoints.rollback`.
"""

from __future__ import annotations

import json

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.checkpoints.rollback import RollbackFailed, RollbackNotDone, RollbackTarget
from service.queue.base import QueueUnavailable
from service.queue.keys import ShardKeys


class ControlInbox:
    """The worker's inbox of rollback commands: takes each pending one, runs it, replies."""

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
