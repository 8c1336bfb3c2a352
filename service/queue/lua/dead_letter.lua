-- Needs release.lua and fence.lua. KEYS: stream, counter, dead-letter stream, per-context
-- counters, fence. ARGV: writer token, group, id, reason, context index or '', kept.
-- Copies a pending entry (its payload too) to the dead-letter stream with its reason, then
-- acknowledges it and releases its examples; an entry no longer pending is left alone.
local fields = fields_of(KEYS[1], ARGV[3])
local examples = tonumber(fields['n'] or '0') or 0
local payload = fields['e'] or ''
if redis.call('XACK', KEYS[1], ARGV[2], ARGV[3]) == 0 then return 0 end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*',
  'id', ARGV[3], 'reason', ARGV[4], 'c', ARGV[5], 'n', examples, 'e', payload)
release(KEYS[2], KEYS[4], examples, fields['c'])
return 1
