-- Writer fencing (service/training/fencing.py). KEYS[#KEYS] of a fenced script holds the newest writer
-- token seen for the shard, ARGV[1] is the caller's token ('' for an unfenced caller). An older
-- token is refused with a FENCED error before anything changes; a newer one becomes the newest.
local function check_fence(key, token)
  if token == '' then return end
  local newest = tonumber(redis.call('GET', key) or '0')
  local mine = tonumber(token)
  if mine < newest then
    error({err = 'FENCED writer token ' .. token .. ' is older than ' .. newest})
  end
  if mine > newest then redis.call('SET', key, token) end
end
check_fence(KEYS[#KEYS], ARGV[1])
