"""Remembered predictions in Redis, one key per id with the time to live as its expiry.

A claim runs as one Lua script, so that two feedback calls with the same id cannot both take
its row: the script checks every id, then deletes the rows and leaves used markers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import msgpack
import numpy as np
from redis.exceptions import RedisError

from service.feedback.store import Claim, FeedbackStore, FeedbackUnavailable, Remembered
from service.model_sync import redis_client

_CLAIM = """
local n = #KEYS / 2
local values = {}
local missing = {}
local used = {}
for i = 1, n do
  local value = redis.call('GET', KEYS[i])
  if value then
    values[i] = value
  elseif redis.call('EXISTS', KEYS[n + i]) == 1 then
    table.insert(used, i)
  else
    table.insert(missing, i)
  end
end
if #missing > 0 or #used > 0 then
  return {0, missing, used}
end
for i = 1, n do
  local ttl = redis.call('PTTL', KEYS[i])
  redis.call('DEL', KEYS[i])
  redis.call('SET', KEYS[n + i], '1', 'PX', math.max(ttl, 1))
end
return {1, values}
"""


def _encode(row: Remembered) -> bytes:
    payload: bytes = msgpack.packb(
        {"x": np.ascontiguousarray(row.inputs, dtype="<f4").tobytes(), "p": row.predicted}
    )
    return payload


def _decode(payload: bytes) -> Remembered:
    data = msgpack.unpackb(payload)
    return Remembered(np.frombuffer(data["x"], dtype="<f4").copy(), int(data["p"]))


@contextmanager
def _unavailable_on_redis_errors() -> Iterator[None]:
    try:
        yield
    except RedisError as error:
        raise FeedbackUnavailable(str(error)) from None


class RedisFeedbackStore(FeedbackStore):
    """Rows under `<prefix>feedback:<id>`, used markers under `<prefix>feedback-used:<id>`."""

    def __init__(self, url: str, key_prefix: str, ttl_seconds: float) -> None:
        self._redis = redis_client(url)
        self._prefix = key_prefix
        self.ttl_ms = max(1, int(ttl_seconds * 1000))
        self._claim = self._redis.register_script(_CLAIM)

    def _row_key(self, prediction_id: str) -> str:
        return f"{self._prefix}feedback:{prediction_id}"

    def _used_key(self, prediction_id: str) -> str:
        return f"{self._prefix}feedback-used:{prediction_id}"

    async def remember(self, ids: Sequence[str], rows: Sequence[Remembered]) -> None:
        with _unavailable_on_redis_errors():
            async with self._redis.pipeline(transaction=False) as pipe:
                for prediction_id, row in zip(ids, rows, strict=True):
                    pipe.set(self._row_key(prediction_id), _encode(row), px=self.ttl_ms)
                await pipe.execute()

    async def claim(self, ids: Sequence[str]) -> Claim:
        keys = [self._row_key(i) for i in ids] + [self._used_key(i) for i in ids]
        with _unavailable_on_redis_errors():
            answer = await self._claim(keys=keys)
        if int(answer[0]) == 1:
            return Claim([_decode(value) for value in answer[1]], [], [])
        missing = [ids[int(position) - 1] for position in answer[1]]
        used = [ids[int(position) - 1] for position in answer[2]]
        return Claim([], missing, used)

    async def release(self, ids: Sequence[str], rows: Sequence[Remembered]) -> None:
        with _unavailable_on_redis_errors():
            async with self._redis.pipeline(transaction=True) as pipe:
                for prediction_id, row in zip(ids, rows, strict=True):
                    pipe.delete(self._used_key(prediction_id))
                    pipe.set(self._row_key(prediction_id), _encode(row), px=self.ttl_ms)
                await pipe.execute()

    async def pushed_out_before_ms(self) -> int:
        return -1  # Redis keeps every row for its whole time to live

    async def close(self) -> None:
        await self._redis.aclose()
