-- Needs helpers.lua. KEYS: applied state, then one refusal key per refused entry. ARGV: newest
-- applied id, model version, channel, refusal ttl, then one reason per refusal key.
-- Records the refusals first, so a waiter woken by the announcement finds its entry's. Keeps the
-- newest id, and announces the state only when it changed, so a repeated or out-of-order
-- publish never moves waiters backwards.
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], ARGV[i + 3], 'EX', ARGV[4])
end
local id, version = ARGV[1], ARGV[2]
local current = redis.call('GET', KEYS[1])
local current_id, current_version
if current then current_id, current_version = string.match(current, '^(%S+) (%d+)$') end
if current_id and not id_less(current_id, id) then return 0 end
local state = id .. ' ' .. version
redis.call('SET', KEYS[1], state)
redis.call('PUBLISH', ARGV[3], state)
return 1
