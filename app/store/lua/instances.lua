-- List the broker instances whose heartbeat has not lapsed, on Redis time.
-- KEYS[1] instances zset: member "INSTANCE VERSION", score = Redis ms at which it lapses
-- Returns {member1, ms_left1, member2, ms_left2, ...}, soonest to lapse first
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')
local out = {}
for i = 1, #live, 2 do
  out[#out + 1] = live[i]
  out[#out + 1] = tonumber(live[i + 1]) - now
end
return out
