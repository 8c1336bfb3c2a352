"""The API side of a rollback in the split roles: relays the command to the worker.

The API process pushes the command onto a Redis list that the worker polls between steps
(`service.checkpoints.rollback_inbox`), and waits for the worker's reply on a per-request key. A
command the worker has not taken when the API stops waiting is withdrawn, so a rollback the
caller heard had failed never happens later.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import NoReturn

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.checkpoints.rollback import RollbackFailed, RollbackNotDone, RollbackUnanswered
from service.queue.keys import ShardKeys

WAIT_SLICE_SECONDS = 1.0
"""How long one BLPOP for the worker's reply blocks: below the socket timeout of the service's
Redis clients (`service.queue.redis_link.redis_client`)."""


class RedisRollback:
    """A `RollbackTarget` that relays the rollback to the shard's worker through Redis."""

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
