-- Reserve one upstream permit in the fleet's sliding window, on Redis time.
-- A permit's slot is the earliest time at which the window holds fewer than `limit` grants,
-- no earlier than the last slot (first come, first served) or the end of a cooldown.
-- KEYS[1] grants zset (member: permit id, score: slot in ms of Redis time)
-- KEYS[2] cooldown string (exists until the upstream's reset has passed)
-- ARGV[1] limit, ARGV[2] window + safety margin in ms, ARGV[3] longest wait in ms,
-- ARGV[4] permit id
-- Returns {granted 0|1, delay_ms, remaining, reset_ms}: delay is how long the caller sleeps
-- before using the permit (or, when not granted, until a permit would be free)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- Grants before now - window can no longer share a (closed) window with a slot >= now.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - window))
local slot = now
local cooldown = redis.call('PTTL', KEYS[2])
if cooldown > 0 then slot = now + cooldown end
local n = redis.call('ZCARD', KEYS[1])
if n > 0 then
  local last = tonumber(redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2])
  if last > slot then slot = last end
end
if n >= limit then
  -- the limit-th most recent grant must have left the window (closed interval: +1 ms)
  local kth = tonumber(redis.call('ZRANGE', KEYS[1], n - limit, n - limit, 'WITHSCORES')[2])
  if kth + window + 1 > slot then slot = kth + window + 1 end
end

local delay = slot - now
if delay > tonumber(ARGV[3]) then
  return {0, delay, 0, delay}
end
redis.call('ZADD', KEYS[1], slot, ARGV[4])
redis.call('PEXPIRE', KEYS[1], window + delay + 1000)
n = n + 1
local oldest = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2])
local remaining = limit - n
if remaining < 0 then remaining = 0 end
return {1, delay, remaining, oldest + window - now}
