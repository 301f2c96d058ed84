-- Store a new sealed token unless the stored one expires later (a holder whose lock lapsed can
-- never replace a newer token), end any hold, and announce the change to every instance.
-- The times were read from this server's clock (time.lua) just before and are sealed inside
-- the entry, so the entry is stored as given; expires_at is repeated in clear for this compare.
-- KEYS[1] token hash, KEYS[2] hold
-- ARGV[1] sealed, ARGV[2] digest (keyed, of the token), ARGV[3] expires_at (unix s, Redis'
-- clock), ARGV[4] key TTL in ms, ARGV[5] changes channel, ARGV[6] message "tag saved digest"
-- Returns 1 when stored, 0 when the stored entry expires later (the caller reads it)
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'hash' then
  local stored = tonumber(redis.call('HGET', KEYS[1], 'expires_at'))
  -- stored == stored: false for NaN, which a tampered field may hold
  if stored and stored == stored and stored >= tonumber(ARGV[3]) then
    return 0
  end
end
-- DEL first: a key of another type, or stray fields, never outlive a save
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'sealed', ARGV[1], 'digest', ARGV[2], 'expires_at', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
