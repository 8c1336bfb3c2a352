"""Remembered predictions in Redis, one key per id with the time to live as its expiry.

A look and a claim each run as one Lua script, so that two feedback calls with the same id
cannot both take its row: the script checks every id, then (a claim) deletes the rows and leaves
used markers.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import msgpack
import numpy as np
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from service.feedback.ids import PredictionId, parse_id
from service.feedback.store import Claim, FeedbackStore, FeedbackUnavailable, Remembered
from service.queue.redis_link import redis_client

# KEYS: the row keys, the used markers, then each id's waiting set; ARGV: the ids. Answers
# {1, rows} when every id has its row, else {0, missing positions, used positions}.
_CHECK = """
local n = #KEYS / 3
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
"""
_LOOK = _CHECK + "return {1, values}"
_CLAIM = (
    _CHECK
    + """
for i = 1, n do
  local ttl = redis.call('PTTL', KEYS[i])
  redis.call('DEL', KEYS[i])
  redis.call('SET', KEYS[n + i], '1', 'PX', math.max(ttl, 1))
  redis.call('ZREM', KEYS[2 * n + i], ARGV[i])
end
return {1, values}
"""
)

# KEYS: the context's waiting ids (a sorted set by creation time), its pushed-out mark, then the
# row keys. ARGV: ttl ms, share, now ms, row key prefix, then (payload, id, created ms) per row.
# A context past its share loses its own oldest waiting rows, never another context's.
_REMEMBER = """
local waiting, mark = KEYS[1], KEYS[2]
local ttl, share, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', waiting, '-inf', now - ttl)
for i = 3, #KEYS do
  local at = 5 + (i - 3) * 3
  redis.call('SET', KEYS[i], ARGV[at], 'PX', ttl)
  redis.call('ZADD', waiting, ARGV[at + 2], ARGV[at + 1])
end
local over = redis.call('ZCARD', waiting) - share
if over > 0 then
  local oldest = redis.call('ZPOPMIN', waiting, over)
  local pushed = tonumber(redis.call('GET', mark) or '-1')
  for j = 1, #oldest, 2 do
    redis.call('DEL', ARGV[4] .. oldest[j])
    pushed = math.max(pushed, tonumber(oldest[j + 1]))
  end
  redis.call('SET', mark, pushed, 'PX', ttl)
end
redis.call('PEXPIRE', waiting, ttl)
return over
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
    """Rows under `<prefix>feedback:<id>`, used markers under `<prefix>feedback-used:<id>`; each
    context's waiting ids in `<prefix>feedback-waiting:<index>`, at most
    `max_rows_per_context` of them (its oldest are pushed out first)."""

    def __init__(
        self,
        url: str,
        key_prefix: str,
        ttl_seconds: float,
        max_rows_per_context: int = 10_000,
    ) -> None:
        self._redis = redis_client(url)
        self._prefix = key_prefix
        self.ttl_ms = max(1, int(ttl_seconds * 1000))
        self.max_rows_per_context = max_rows_per_context
        self._look = self._redis.register_script(_LOOK)
        self._claim = self._redis.register_script(_CLAIM)
        self._remember = self._redis.register_script(_REMEMBER)

    def _row_key(self, prediction_id: str) -> str:
        return f"{self._prefix}feedback:{prediction_id}"

    def _used_key(self, prediction_id: str) -> str:
        return f"{self._prefix}feedback-used:{prediction_id}"

    def _waiting_key(self, context: int) -> str:
        return f"{self._prefix}feedback-waiting:{context}"

    def _pushed_key(self, context: int) -> str:
        return f"{self._prefix}feedback-pushed:{context}"

    async def remember(self, ids: Sequence[str], rows: Sequence[Remembered]) -> None:
        by_context: dict[int, list[tuple[PredictionId, Remembered]]] = defaultdict(list)
        for prediction_id, row in zip(ids, rows, strict=True):
            parsed = parse_id(prediction_id) or PredictionId(prediction_id, -1, 0)
            by_context[parsed.context_index].append((parsed, row))
        now_ms = int(time.time() * 1000)
        with _unavailable_on_redis_errors():
            for context, kept in by_context.items():
                args: list[bytes | str | int] = [
                    self.ttl_ms,
                    self.max_rows_per_context,
                    now_ms,
                    self._row_key(""),
                ]
                for parsed, row in kept:
                    args += [_encode(row), parsed.text, parsed.created_ms]
                keys = [self._waiting_key(context), self._pushed_key(context)]
                keys += [self._row_key(parsed.text) for parsed, _ in kept]
                await self._remember(keys=keys, args=args)

    async def look(self, ids: Sequence[str]) -> Claim:
        return await self._checked(self._look, ids)

    async def claim(self, ids: Sequence[str]) -> Claim:
        return await self._checked(self._claim, ids)

    async def _checked(self, script: AsyncScript, ids: Sequence[str]) -> Claim:
        contexts = [_context_of(i) for i in ids]
        keys = [self._row_key(i) for i in ids] + [self._used_key(i) for i in ids]
        keys += [self._waiting_key(c) for c in contexts]
        with _unavailable_on_redis_errors():
            answer = await script(keys=keys, args=list(ids))
        if int(answer[0]) == 1:
            return Claim([_decode(value) for value in answer[1]], [], [])
        missing = [ids[int(position) - 1] for position in answer[1]]
        used = [ids[int(position) - 1] for position in answer[2]]
        return Claim([], missing, used)

    async def pushed_out(self, ids: Sequence[str]) -> list[str]:
        parsed = [p for p in map(parse_id, ids) if p is not None]
        contexts = sorted({p.context_index for p in parsed})
        with _unavailable_on_redis_errors():
            marks = (
                await self._redis.mget([self._pushed_key(c) for c in contexts]) if contexts else []
            )
        mark_of = {c: int(m) if m is not None else -1 for c, m in zip(contexts, marks, strict=True)}
        return [p.text for p in parsed if p.created_ms <= mark_of[p.context_index]]

    async def close(self) -> None:
        await self._redis.aclose()


def _context_of(prediction_id: str) -> int:
    """The context an id was issued for; -1 for a string that is no prediction id (its row is
    then simply missing)."""
    parsed = parse_id(prediction_id)
    return -1 if parsed is None else parsed.context_index
