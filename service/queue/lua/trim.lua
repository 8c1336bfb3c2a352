-- Needs helpers.lua and fence.lua. KEYS: stream, fence. ARGV: writer token, group, wanted min
-- id. Trims below the wanted id, but never past the oldest entry that is still pending or not
-- yet delivered. Returns the number of entries removed.
local info = group_info(KEYS[1], ARGV[2])
if not info then return 0 end
local floor = redis.call('XPENDING', KEYS[1], ARGV[2])[2]
if not floor then
  local undelivered = redis.call(
    'XRANGE', KEYS[1], '(' .. info['last-delivered-id'], '+', 'COUNT', 1)
  if undelivered[1] then floor = undelivered[1][1] end
end
local bound = ARGV[3]
if floor and id_less(floor, bound) then bound = floor end
return redis.call('XTRIM', KEYS[1], 'MINID', bound)
