-- KEYS: stream, counter, put token, per-context counters (hash).
-- ARGV: limit, examples, payload, token ttl, fingerprint, context, context limit ('' for none).
-- Returns {1, id} when queued now, {3, id} when an earlier put with the token queued the same
-- entry, {2, ''} when it queued a different one, {0, pending} when the queue is full, and
-- {4, pending of the context} when the context holds its whole share.
local seen = redis.call('GET', KEYS[3])
if seen then
  local id, fingerprint = string.match(seen, '^(%S+) (%S*)$')
  if fingerprint == ARGV[5] then return {3, id} end
  return {2, ''}
end
local examples = tonumber(ARGV[2])
local mine = tonumber(redis.call('HGET', KEYS[4], ARGV[6]) or '0')
if ARGV[7] ~= '' and mine + examples > tonumber(ARGV[7]) then return {4, mine} end
local pending = tonumber(redis.call('GET', KEYS[2]) or '0')
if pending + examples > tonumber(ARGV[1]) then return {0, pending} end
local id = redis.call('XADD', KEYS[1], '*', 'e', ARGV[3], 'n', ARGV[2], 'c', ARGV[6])
redis.call('INCRBY', KEYS[2], examples)
redis.call('HINCRBY', KEYS[4], ARGV[6], examples)
redis.call('SET', KEYS[3], id .. ' ' .. ARGV[5], 'EX', ARGV[4])
return {1, id}
