-- Needs helpers.lua. KEYS: stream, counter. ARGV: group.
-- Returns {pending examples, oldest unacknowledged id or '', now in ms}.
local examples = tonumber(redis.call('GET', KEYS[2]) or '0')
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local info = group_info(KEYS[1], ARGV[1])
if not info then
  if redis.call('EXISTS', KEYS[1]) == 0 then return {examples, '', now_ms} end
  local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
  return {examples, first[1] and first[1][1] or '', now_ms}
end
local oldest = redis.call('XPENDING', KEYS[1], ARGV[1])[2]
if not oldest then
  local after = '(' .. info['last-delivered-id']
  local undelivered = redis.call('XRANGE', KEYS[1], after, '+', 'COUNT', 1)
  oldest = undelivered[1] and undelivered[1][1] or ''
end
return {examples, oldest, now_ms}
