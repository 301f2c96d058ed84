-- Read the window's usage for /health and /metrics, on Redis time; changes nothing.
-- KEYS[1] grants zset, KEYS[2] cooldown, KEYS[3] leases zset, KEYS[4] waiters hash
-- ARGV[1] window + safety margin in ms, ARGV[2] the most grants and waiters to attribute
-- Returns {grants in the window, cooldown_ms, {caller, granted, ...}, {caller, waiting, ...}}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local since = '(' .. (now - tonumber(ARGV[1]))
local most = tonumber(ARGV[2])
local used = redis.call('ZCOUNT', KEYS[1], since, '+inf')
local cooldown = redis.call('PTTL', KEYS[2])
if cooldown < 0 then cooldown = 0 end

local function flat(counts)
  local out = {}
  for name, count in pairs(counts) do
    out[#out + 1] = name
    out[#out + 1] = count
  end
  return out
end

local granted = {}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], since, '+inf', 'LIMIT', 0, most)) do
  local who = string.match(member, '^(%S+) ') or '?'
  granted[who] = (granted[who] or 0) + 1
end
local waiting = {}
for _, w in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], now, '+inf', 'LIMIT', 0, most)) do
  local kind = redis.call('HGET', KEYS[4], w)
  if kind then
    local who = string.sub(kind, 3)
    waiting[who] = (waiting[who] or 0) + 1
  end
end
return {used, cooldown, flat(granted), flat(waiting)}
