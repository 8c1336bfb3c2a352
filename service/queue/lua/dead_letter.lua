-- KEYS: stream, counter, dead-letter stream. ARGV: group, id, reason, context index or '', kept.
-- Copies a pending entry (its payload too) to the dead-letter stream with its reason, then
-- acknowledges it and releases its examples; an entry no longer pending is left alone.
local found = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
local examples, payload = 0, ''
if found[1] then
  local fields = found[1][2]
  for j = 1, #fields, 2 do
    if fields[j] == 'n' then examples = tonumber(fields[j + 1]) or 0 end
    if fields[j] == 'e' then payload = fields[j + 1] end
  end
end
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*',
  'id', ARGV[2], 'reason', ARGV[3], 'c', ARGV[4], 'n', examples, 'e', payload)
if examples > 0 and redis.call('DECRBY', KEYS[2], examples) < 0 then
  redis.call('SET', KEYS[2], 0)
end
return 1
