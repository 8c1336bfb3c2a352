-- Prepended to the scripts that take entries out of the queue. Releases one entry's examples
-- from the pending counter and from its context's (entries queued before contexts were
-- counted carry no context and release from the total only).
local function release(counter, by_context, examples, context)
  if examples > 0 and redis.call('DECRBY', counter, examples) < 0 then
    redis.call('SET', counter, 0)
  end
  if context and context ~= '' and examples > 0 then
    if redis.call('HINCRBY', by_context, context, -examples) <= 0 then
      redis.call('HDEL', by_context, context)
    end
  end
end
local function fields_of(stream, id)
  local found = redis.call('XRANGE', stream, id, id)
  local fields = {}
  if found[1] then
    local flat = found[1][2]
    for j = 1, #flat, 2 do fields[flat[j]] = flat[j + 1] end
  end
  return fields
end
