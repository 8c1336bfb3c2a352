-- Needs release.lua and fence.lua. KEYS: stream, counter, per-context counters, fence.
-- ARGV: writer token, group, then ids. Only ids that XACK really removes from the pending list
-- release their examples, so acking an id twice, or an id that was never delivered, changes
-- nothing.
local released = 0
for i = 3, #ARGV do
  if redis.call('XACK', KEYS[1], ARGV[2], ARGV[i]) == 1 then
    local fields = fields_of(KEYS[1], ARGV[i])
    local examples = tonumber(fields['n'] or '0') or 0
    release(KEYS[2], KEYS[3], examples, fields['c'])
    released = released + examples
  end
end
return released
