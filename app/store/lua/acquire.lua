-- Try once to take a client's refresh lock.
-- KEYS[1] lock; ARGV[1] owner id (unique per acquisition), ARGV[2] TTL in ms
-- Returns {1} when taken, {0, ms_left} when another owner holds it
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1}
end
return {0, redis.call('PTTL', KEYS[1])}
