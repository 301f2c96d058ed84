-- Start (or extend, never shorten) the fleet's cooldown after an upstream 429.
-- KEYS[1] cooldown; ARGV[1] length in ms
-- Returns the cooldown's remaining ms after the call
local left = redis.call('PTTL', KEYS[1])
if left < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
  return tonumber(ARGV[1])
end
return left
