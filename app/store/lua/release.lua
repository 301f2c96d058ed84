-- Release a refresh lock only if this owner still holds it, and wake the waiting instances
-- (after a failed refresh they must not sleep until the lock would have lapsed).
-- KEYS[1] lock; ARGV[1] owner id, ARGV[2] changes channel, ARGV[3] message "client released -"
-- Returns 1 when released, 0 when the lock had lapsed or belongs to another owner
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
