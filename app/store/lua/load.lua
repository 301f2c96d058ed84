-- Read one client's token and hold in one round trip.
-- KEYS[1] token hash (fields access_token, token_type, expires_at, obtained_at)
-- KEYS[2] hold string (value: reason; expires by itself)
-- Returns {access_token|false, token_type, expires_at, obtained_at, hold_reason|false, hold_pttl}
local t = redis.call('HMGET', KEYS[1], 'access_token', 'token_type', 'expires_at', 'obtained_at')
local reason = redis.call('GET', KEYS[2])
local pttl = -2
if reason then pttl = redis.call('PTTL', KEYS[2]) end
return {t[1], t[2], t[3], t[4], reason, pttl}
