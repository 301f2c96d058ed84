-- Compare-and-delete a reported token, at most once per forced-refresh interval. The entry is
-- sealed, so the comparison is on the keyed digest of the token (field `digest`).
-- KEYS[1] token hash, KEYS[2] forced-refresh marker (expires after the interval)
-- ARGV[1] keyed digest of the reported access_token, ARGV[2] interval in ms, ARGV[3] changes
-- channel, ARGV[4] message "tag discarded digest"
-- Returns {0} not the current token, {1} discarded, {2, ms_left} throttled
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' or redis.call('HGET', KEYS[1], 'digest') ~= ARGV[1] then
  return {0}
end
local left = redis.call('PTTL', KEYS[2])
if left > 0 then
  return {2, left}
end
redis.call('DEL', KEYS[1])
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return {1}
