-- Confirm a reserved permit when its slot arrives: a cooldown reported after the reservation
-- voids it (the fleet grants nothing until the upstream's reset), and so does a reservation the
-- window no longer holds (made on a primary whose writes a failover lost).
-- KEYS[1] grants zset, KEYS[2] cooldown; ARGV[1] permit id
-- Returns {1} confirmed, or {0, ms} when the permit was withdrawn: ms is the cooldown left, at
-- least 1 (queue again)
local cooldown = redis.call('PTTL', KEYS[2])
if cooldown > 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return {0, cooldown}
end
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return {0, 1}
end
return {1}
