-- Read the window's usage for /health, on Redis time.
-- KEYS[1] grants zset, KEYS[2] cooldown; ARGV[1] window + safety margin in ms
-- Returns {grants in the window (reserved future slots included), cooldown_ms}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local used = redis.call('ZCOUNT', KEYS[1], '(' .. (now - tonumber(ARGV[1])), '+inf')
local cooldown = redis.call('PTTL', KEYS[2])
if cooldown < 0 then cooldown = 0 end
return {used, cooldown}
