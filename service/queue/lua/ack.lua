-- KEYS: stream, counter. ARGV: group, then (id, examples) pairs; examples -1 means "look it up".
-- Only ids that XACK really removes from the pending list release their examples, so acking an
-- id twice, or an id that was never delivered, changes nothing.
local released = 0
for i = 2, #ARGV, 2 do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    local examples = tonumber(ARGV[i + 1])
    if examples < 0 then
      examples = 0
      local found = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
      if found[1] then
        local fields = found[1][2]
        for j = 1, #fields, 2 do
          if fields[j] == 'n' then examples = tonumber(fields[j + 1]) end
        end
      end
    end
    released = released + examples
  end
end
if released > 0 and redis.call('DECRBY', KEYS[2], released) < 0 then
  redis.call('SET', KEYS[2], 0)
end
return released
