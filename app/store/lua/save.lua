-- Store a new token unless the stored one expires later (a holder whose lock lapsed can never
-- replace a newer token), end any hold, and announce the change to every instance.
-- Times are stored on Redis' clock: the caller passes them relative to now and gets them back
-- relative to now, so instances whose clocks disagree still agree on how long a token lives.
-- KEYS[1] token hash, KEYS[2] hold
-- ARGV[1] access_token, ARGV[2] token_type, ARGV[3] seconds until expiry,
-- ARGV[4] seconds since obtained (>= 0), ARGV[5] key TTL in ms, ARGV[6] changes channel,
-- ARGV[7] message "client saved digest"
-- Returns {1} when stored, or {0, access_token, token_type, expires_in, age} (the winner; the
-- two times as strings of seconds relative to now)
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local expires_at = now + tonumber(ARGV[3])
local cur = redis.call('HMGET', KEYS[1], 'access_token', 'token_type', 'expires_at', 'obtained_at')
if cur[1] and tonumber(cur[3]) >= expires_at then
  return {0, cur[1], cur[2], tostring(tonumber(cur[3]) - now), tostring(now - tonumber(cur[4]))}
end
redis.call('HSET', KEYS[1], 'access_token', ARGV[1], 'token_type', ARGV[2],
           'expires_at', string.format('%.6f', expires_at),
           'obtained_at', string.format('%.6f', now - tonumber(ARGV[4])))
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[6], ARGV[7])
return {1}
