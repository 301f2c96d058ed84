-- Record one broker instance as alive for a while, on Redis time; drop the ones that lapsed.
-- KEYS[1] instances zset: member "INSTANCE VERSION", score = Redis ms at which it lapses
-- ARGV[1] member, ARGV[2] ttl in ms
-- Returns the number of instances alive after the call
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
-- The key itself lives as long as its longest-lived member, so a stopped fleet leaves nothing.
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], math.max(1, tonumber(last[2]) - now))
return redis.call('ZCARD', KEYS[1])
