-- Confirm a reserved permit when its slot arrives: a cooldown reported after the reservation
-- voids it (the fleet grants nothing until the upstream's reset).
-- KEYS[1] grants zset, KEYS[2] cooldown; ARGV[1] permit id
-- Returns {1} confirmed, or {0, cooldown_ms} when the permit was withdrawn
local cooldown = redis.call('PTTL', KEYS[2])
if cooldown > 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return {0, cooldown}
end
return {1}
