-- Take a queued permit request out (its caller went away); the same bookkeeping as the removal
-- in budget_ask.lua: the caller's waiting count and last tag, and a reset of the virtual time
-- when nothing waits any more.
-- KEYS[1] token queue zset, KEYS[2] API queue zset, KEYS[3] leases zset, KEYS[4] waiters hash,
-- KEYS[5] state hash; ARGV[1] request id
-- Returns 1 if the request was queued, else 0
local kind = redis.call('HGET', KEYS[4], ARGV[1])
if not kind then return 0 end
local who = string.sub(kind, 3)
local queue = KEYS[2]
if string.sub(kind, 1, 1) == 't' then queue = KEYS[1] end
redis.call('ZREM', queue, ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
if redis.call('HINCRBY', KEYS[5], 'n:' .. who, -1) <= 0 then
  redis.call('HDEL', KEYS[5], 'n:' .. who, 'tag:' .. who)
end
if redis.call('HLEN', KEYS[4]) == 0 then
  redis.call('DEL', KEYS[5])
end
return 1
