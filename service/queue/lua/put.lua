-- KEYS: stream, counter, put token. ARGV: limit, examples, payload, token ttl, fingerprint.
-- Returns {1, id} when queued now, {3, id} when an earlier put with the token queued the same
-- entry, {2, ''} when it queued a different one, {0, pending} when full.
local seen = redis.call('GET', KEYS[3])
if seen then
  local id, fingerprint = string.match(seen, '^(%S+) (%S*)$')
  if fingerprint == ARGV[5] then return {3, id} end
  return {2, ''}
end
local pending = tonumber(redis.call('GET', KEYS[2]) or '0')
local examples = tonumber(ARGV[2])
if pending + examples > tonumber(ARGV[1]) then return {0, pending} end
local id = redis.call('XADD', KEYS[1], '*', 'e', ARGV[3], 'n', ARGV[2])
redis.call('INCRBY', KEYS[2], examples)
redis.call('SET', KEYS[3], id .. ' ' .. ARGV[5], 'EX', ARGV[4])
return {1, id}
