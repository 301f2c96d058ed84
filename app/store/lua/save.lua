-- Store a new token unless the stored one expires later (a holder whose lock lapsed can never
-- replace a newer token), end any hold, and announce the change to every instance.
-- KEYS[1] token hash, KEYS[2] hold
-- ARGV[1] access_token, ARGV[2] token_type, ARGV[3] expires_at, ARGV[4] obtained_at (unix s),
-- ARGV[5] key TTL in ms, ARGV[6] changes channel, ARGV[7] message "client saved digest"
-- Returns {1} when stored, or {0, access_token, token_type, expires_at, obtained_at} (the winner)
local cur = redis.call('HMGET', KEYS[1], 'access_token', 'token_type', 'expires_at', 'obtained_at')
if cur[1] and tonumber(cur[3]) >= tonumber(ARGV[3]) then
  return {0, cur[1], cur[2], cur[3], cur[4]}
end
redis.call('HSET', KEYS[1], 'access_token', ARGV[1], 'token_type', ARGV[2],
           'expires_at', ARGV[3], 'obtained_at', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[6], ARGV[7])
return {1}
