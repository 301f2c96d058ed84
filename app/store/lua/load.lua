-- Read one client's token and hold in one round trip.
-- KEYS[1] token hash (fields access_token, token_type, expires_at, obtained_at: unix seconds
-- on Redis' clock)
-- KEYS[2] hold string (value: reason; expires by itself)
-- Returns {access_token|false, token_type, expires_in, age, hold_reason|false, hold_pttl}: the
-- token's times as strings of seconds relative to Redis' now (the reader adds its own now)
local t = redis.call('HMGET', KEYS[1], 'access_token', 'token_type', 'expires_at', 'obtained_at')
local reason = redis.call('GET', KEYS[2])
local pttl = -2
if reason then pttl = redis.call('PTTL', KEYS[2]) end
local expires_in, age = false, false
if t[1] then
  local time = redis.call('TIME')
  local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
  expires_in = tostring(tonumber(t[3]) - now)
  age = tostring(now - tonumber(t[4]))
end
return {t[1], t[2], expires_in, age, reason, pttl}
