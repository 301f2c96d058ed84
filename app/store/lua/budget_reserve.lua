-- Reserve one upstream permit in the fleet's sliding window, on Redis time.
-- A permit's slot is the earliest time at which the window holds fewer than `limit` grants,
-- no earlier than the last slot (first come, first served) or the end of a cooldown.
-- Failover fence: the epoch key names the Redis process (run_id) that counted the window. When
-- this process is another one (a promoted replica, a restart that reloaded the keys) or the
-- window vanished under an instance that saw it, grants counted by the previous process may be
-- lost (replication is asynchronous), so the fleet grants nothing for one window + grace.
-- KEYS[1] grants zset (member: permit id, score: slot in ms of Redis time)
-- KEYS[2] cooldown string (exists until the upstream's reset or the fence has passed)
-- KEYS[3] epoch string (run_id of the process that counts the window)
-- ARGV[1] limit, ARGV[2] window + safety margin in ms, ARGV[3] longest wait in ms,
-- ARGV[4] permit id, ARGV[5] fence length in ms, ARGV[6] the epoch the caller saw within the
-- last window, or ''
-- Returns {granted 0|1, delay_ms, remaining, reset_ms, epoch, fenced 0|1}: delay is how long
-- the caller sleeps before using the permit (or, when not granted, until a permit would be free)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
local epoch = redis.call('GET', KEYS[3])
local fenced = 0
if epoch ~= run_id then
  if epoch or ARGV[6] ~= '' then
    if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[5]) then
      redis.call('SET', KEYS[2], 'fence', 'PX', ARGV[5])
    end
    fenced = 1
  end
  redis.call('SET', KEYS[3], run_id, 'PX', window + 1000)
end

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
-- The epoch outlives every grant it vouches for, and stays a window after any caller saw it.
redis.call('PEXPIRE', KEYS[3], window + delay + 1000)
if delay > tonumber(ARGV[3]) then
  return {0, delay, 0, delay, run_id, fenced}
end
redis.call('ZADD', KEYS[1], slot, ARGV[4])
redis.call('PEXPIRE', KEYS[1], window + delay + 1000)
-- remaining and reset count from the slot (when the caller uses the permit), as the upstream's
-- would then: the grants still in the window at that moment (later reservations included), and
-- until the oldest of them leaves it.
local first = redis.call('ZRANGEBYSCORE', KEYS[1], slot - window, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
local remaining = limit - redis.call('ZCOUNT', KEYS[1], slot - window, '+inf')
if remaining < 0 then remaining = 0 end
return {1, delay, remaining, tonumber(first[2]) + window - slot, run_id, fenced}
